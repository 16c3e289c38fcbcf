"""README.md's code runs as pasted.

- Every ```python block runs as it stands, with the test checkpoint in place of ``"mobile_sam"``
  (no trained weights can be downloaded here), unless the line before it is
  ``<!-- readme-test: needs user files -->``.
- Every ``mobilesam ...`` line of a ```bash block parses with the real command-line parser, so the
  README cannot show an option that does not exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- readme-test: needs user files -->"


def _blocks(lang: str) -> list[tuple[int, str, bool]]:
    """(line number, code, marked as needing user files) of every ```lang block."""
    lines = README.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            before = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            out.append((i + 1, "\n".join(lines[i + 1 : j]), before == MARK))
            i = j
        i += 1
    return out


PYTHON = _blocks("python")


def test_the_readme_has_runnable_python():
    assert sum(not marked for *_, marked in PYTHON) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("line, code", [(n, c) for n, c, marked in PYTHON if not marked], ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_block_runs_as_pasted(line, code, checkpoint):
    assert '"mobile_sam"' in code or "build_mobilesam" not in code
    code = code.replace('"mobile_sam"', repr(str(checkpoint)))
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def _command_lines() -> list[str]:
    cmds = []
    for _, code, _ in _blocks("bash"):
        for cmd in re.sub(r"\\\n\s*", " ", code).splitlines():
            words = shlex.split(cmd, comments=True)
            if words[:1] == ["mobilesam"] and "--help" not in words and "..." not in words:  # "..." = the user's arguments
                cmds.append(words[1:])
    return cmds


@pytest.mark.parametrize("words", _command_lines(), ids=lambda w: " ".join(w[:2]))
def test_command_lines_parse(words):
    from napari_mobilesam.cli import build_parser

    build_parser().parse_args(words)  # exits with status 2 on an unknown option
