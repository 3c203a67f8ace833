"""The package's import direction: every module imports only modules listed above it in the
Layout section of docs/architecture.md (the one place that states the order), at module level and
inside functions, and nothing imports in a cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "armt"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def layout_order(text: str) -> list[str]:
    """The modules of the Layout section's listing, lowest first: ``  name.py`` or ``  name/``
    at the start of a line of its code block (``__init__.py`` is the package, ``armt``)."""
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    names = [m.group(1) for m in re.finditer(r"^  (\w+)(?:\.py|/)\s", block, flags=re.MULTILINE)]
    return ["armt" if n == "__init__" else n for n in names]


# the one statement of the order is the architecture page; a module imports only those above it
RANK = {name: i for i, name in enumerate(layout_order(ARCHITECTURE.read_text(encoding="utf-8")))}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    """``armt.data.babi`` -> ``data``; ``armt`` -> ``armt``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "armt"


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every armt module ``path`` imports (anywhere in the file), with its line."""
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "armt"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "armt":
                continue
            # `from . import window` names a module; `from .x import name` names x
            names = [f"{target}.{a.name}" for a in node.names]
            modules = [n for n in names if (SRC.parent / Path(*n.split("."))).with_suffix(".py").exists()
                       or (SRC.parent / Path(*n.split("."))).is_dir()]
            found += [(m, node.lineno) for m in modules] or [(target, node.lineno)]
    return found


def _graph() -> dict[str, list[tuple[str, int]]]:
    return {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_module_has_a_rank():
    unranked = sorted({_group(m) for m in _graph()} - set(RANK))
    assert not unranked, f"add {unranked} to the Layout section of docs/architecture.md"


def test_imports_point_down():
    wrong = []
    for module, imports in _graph().items():
        if module == "armt":
            continue  # the package's facade re-exports from its modules
        for target, line in imports:
            if RANK[_group(target)] > RANK[_group(module)]:
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "imports against the layout's direction:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t, _ in imports if t != m} for m, imports in _graph().items()}
    graph.pop("armt")  # the facade sits above its modules by construction
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(nxt_key(node), ()):
            if nxt == "armt":
                continue
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    def nxt_key(node):
        return node if node in graph else f"{node}.__init__"

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_a_backwards_import_is_caught(tmp_path, monkeypatch):
    # the checks above must be able to fail: a low module importing a high one is reported
    fake = tmp_path / "armt"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "config.py").write_text("def f():\n    from .model import X\n")
    (fake / "model.py").write_text("from .config import f\n")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "babi.py").write_text("from ..cli import main\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    with pytest.raises(AssertionError, match=r"armt.config:2 imports armt.model"):
        test_imports_point_down()
    monkeypatch.setitem(RANK, "cli", RANK["cli"])
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


def _private_names_defined(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, names and ``self._x`` it assigns."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)  # (setting another library's private field defines nothing of ours)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_reads(tree: ast.AST) -> list[tuple[str, int]]:
    """``x._name`` where ``x`` is not ``self`` or ``cls``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found.append((node.attr, node.lineno))
    return found


def test_no_module_reads_another_modules_private_names():
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in SRC.rglob("*.py")}
    defined = {path: _private_names_defined(tree) for path, tree in trees.items()}
    bad = []
    for path, tree in trees.items():
        for name, line in _private_reads(tree):
            owners = [p for p, names in defined.items() if name in names and p != path]
            if owners and name not in defined[path]:
                bad.append(f"{path.relative_to(SRC)}:{line} reads {name} of {owners[0].relative_to(SRC)}")
    assert not bad, "make these public (with a docstring) or move the code: " + "; ".join(bad)


def test_the_private_name_check_can_fail():
    owner = ast.parse("class A:\n    def _hidden(self):\n        pass\n")
    reader = ast.parse("def f(a):\n    return a._hidden()\n")
    assert "_hidden" in _private_names_defined(owner)
    assert _private_reads(reader) == [("_hidden", 2)] and "_hidden" not in _private_names_defined(reader)


# members of the facade (ARMTForCausalLM) that the cell does not have
FACADE_ONLY = {"cell", "check_inputs", "padding_plan", "wavefront_plan", "gradient_checkpointing", "count_loss_pairs",
               "output_vocab_size", "freeze_base"}
# the public entries that take a model and hand its cell on: MemoryReader(model), generation_defaults(model=)
ENTRIES = {("streaming.py", "__init__"), ("generation.py", "generation_defaults")}


def _facade_reads(path: Path) -> list[str]:
    """``x.<facade member>`` in ``path`` outside the public entries that take a model."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and (path.name, node.name) in ENTRIES:
            allowed |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in FACADE_ONLY and id(node) not in allowed
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


def test_the_engine_modules_work_on_the_cell_not_the_model():
    # generation, streaming and the wavefront sit below the facade: they get the cell (config,
    # weights, hooks), never the model object whose forward would call back into them
    found = [hit for name in ("generation.py", "streaming.py", "wavefront.py") for hit in _facade_reads(SRC / name)]
    assert not found, "facade members used below the facade (pass the cell instead):\n" + "\n".join(found)


def test_a_facade_read_below_it_is_caught(tmp_path):
    module = tmp_path / "generation.py"
    module.write_text("def generate(model):\n    return model.check_inputs()\n\n"
                      "def generation_defaults(model):\n    return model.cell\n")
    assert _facade_reads(module) == ["generation.py:2 .check_inputs"]
