"""The docs: the MkDocs site under docs/ builds with ``--strict`` (a broken link, a missing anchor
or an API reference that does not resolve fails the build), and the README stays a front door: at
most 250 lines, opening with the two set-up commands that CI runs, every relative link pointing at
a file that exists."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250
# byte for byte: .ci/run runs the second one
SETUP_COMMANDS = [
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e . && armt demo",
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[test]" && python -m pytest -q',
]


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_is_short():
    n = len(_readme().splitlines())
    assert n <= MAX_README_LINES, (f"README.md has {n} lines (at most {MAX_README_LINES}): move the "
                                   "detail into a page under docs/ and link to it.")


def test_readme_opens_with_the_setup_commands():
    text = _readme()
    before, sep, after = text.partition("\n## Set-up\n")
    assert sep, "README.md needs a '## Set-up' section."
    # only the title and the intro paragraph come first
    assert before.startswith("# ") and "\n#" not in before and "```" not in before, (
        "README.md must open with its title and intro paragraph, then '## Set-up'.")
    block = re.match(r"\s*```bash\n(.*?)\n```", after, flags=re.S)
    assert block, "the Set-up section must start with a bash code block."
    assert block.group(1).splitlines() == SETUP_COMMANDS
    ci = ROOT / ".ci" / "run"
    if ci.exists():
        assert SETUP_COMMANDS[1] in ci.read_text(encoding="utf-8"), "CI no longer runs the README's command."


def test_readme_links_point_at_files():
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _readme()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        if not (ROOT / target.split("#", 1)[0]).exists():
            missing.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed; pip install -e '.[test]' installs the docs tools")
def test_site_builds_strict(tmp_path):
    # NO_MKDOCS_2_WARNING only silences Material's banner about its successor
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert (tmp_path / "site" / "api" / "armt" / "index.html").exists()
