"""The shell recipes under benchmarks/ run for hours: a typo in a flag should fail here, in
seconds, not after the first hour of training."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from armt.cli import build_parser

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.sh"))
# an armt command where a command starts: a line, after ; & | ( { or inside a quoted variable such
# as EVAL="armt babilong eval ..." (not the word armt in a list, as in `for KIND in armt armt_wiped`)
COMMAND = re.compile(r"(?:^|[;&|({\"=])\s*armt ((?:babilong )?[a-z][\w-]*)")


def _logical_lines(text: str) -> list[str]:
    return [line for line in text.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]


def _options(path: str) -> set[str]:
    """The option strings of ``armt <path>`` (e.g. ``"babilong eval"``)."""
    parser = build_parser()
    for name in path.split():
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        if name not in sub.choices:
            raise KeyError(name)
        parser = sub.choices[name]
    return {s for a in parser._actions for s in a.option_strings}


def test_there_are_scripts_to_check():
    assert any(p.name == "smollm2_babilong_length.sh" for p in SCRIPTS)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_armt_command_and_flag_in_a_script_exists(script):
    checked = 0
    for line in _logical_lines(script.read_text()):
        for match in COMMAND.finditer(line):
            path = match.group(1)
            if path in ("train", "babilong train", "lm-eval"):
                continue  # config overrides (--section.key) and lm_eval's own flags: checked elsewhere
            try:
                known = _options(path)
            except (KeyError, StopIteration):
                pytest.fail(f"{script.name}: 'armt {path}' is not a command")
            rest = line[match.end():]
            if line[:match.start()].count('"') % 2:  # inside a quoted string: up to its end
                rest = rest.split('"', 1)[0]
            rest = re.split(r";|&&|\|\||\||>|\barmt ", rest, maxsplit=1)[0]  # this command only
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest):
                assert flag in known, f"{script.name}: 'armt {path}' has no option {flag}"
                checked += 1
    assert checked or "armt " not in script.read_text()
