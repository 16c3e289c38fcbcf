"""README.md's and docs/*.md's code runs as pasted.

- Every ```python block runs as it stands, with the test checkpoint in place of ``"mobile_sam"``
  (no trained weights can be downloaded here), unless the line before it is
  ``<!-- readme-test: needs user files -->``.
- Every ``mobilesam ...`` line of a ```bash block parses with the real command-line parser, so the
  documents cannot show an option that does not exist; within one document, no two commands write
  the same output.
- docs/cli.md lists every option of the parser (``python tools/cli_reference.py`` regenerates it).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- readme-test: needs user files -->"


def _name(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def _blocks(lang: str, doc: Path = README) -> list[tuple[int, str, bool]]:
    """(line number, code, marked as needing user files) of every ```lang block."""
    lines = doc.read_text().splitlines()
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


PYTHON = [(_name(doc), n, code) for doc in DOCS for n, code, marked in _blocks("python", doc) if not marked]


def test_the_readme_has_runnable_python():
    assert sum(not marked for *_, marked in _blocks("python")) >= 2


def test_the_readme_is_a_guide_and_the_internal_notes_are_gone():
    assert len(README.read_text().splitlines()) <= 350
    assert not (ROOT / "docs" / "HELPERS.md").exists() and not (ROOT / "docs" / "API_CONTRACT.md").exists()
    for doc in DOCS:
        assert "/work/" not in doc.read_text(), f"{_name(doc)} names a path of the machine it was written on"


@pytest.mark.slow
@pytest.mark.parametrize("doc, line, code", PYTHON, ids=lambda v: v if isinstance(v, str) and "\n" not in v else (f"line{v}" if isinstance(v, int) else ""))
def test_python_block_runs_as_pasted(doc, line, code, checkpoint, tmp_path):
    assert '"mobile_sam"' in code or "build_mobilesam" not in code or "synthetic_checkpoint()" in code
    code = code.replace('"mobile_sam"', repr(str(checkpoint)))
    code = code.replace("synthetic_checkpoint()", f"synthetic_checkpoint({str(tmp_path)!r})")  # not the user cache
    exec(compile(code, f"{doc}:{line}", "exec"), {"__name__": "__readme__"})


def _command_lines(doc: Path = README) -> list[list[str]]:
    cmds = []
    for _, code, _ in _blocks("bash", doc):
        for cmd in re.sub(r"\\\n\s*", " ", code).splitlines():
            words = shlex.split(cmd, comments=True)
            if words[:1] == ["mobilesam"] and "--help" not in words and "..." not in words:  # "..." = the user's arguments
                cmds.append(words[1:])
    return cmds


COMMANDS = [(_name(doc), words) for doc in DOCS for words in _command_lines(doc)]


@pytest.mark.parametrize("doc, words", COMMANDS, ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]))
def test_command_lines_parse(doc, words):
    from napari_mobilesam.cli import build_parser

    build_parser().parse_args(words)  # exits with status 2 on an unknown option


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_examples_do_not_overwrite_each_others_output(doc):
    """Pasting a document's commands one after the other loses nothing: each writes its own output."""
    outputs: dict[str, list[str]] = {}
    for words in _command_lines(doc):
        for flag in ("-o", "--output", "--out", "--work"):
            if flag in words:
                outputs.setdefault(words[words.index(flag) + 1], []).append(" ".join(words))
    assert not {out: cmds for out, cmds in outputs.items() if len(set(cmds)) > 1}


def test_docs_cli_lists_every_option():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from cli_reference import option_strings
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = sorted(o for o in option_strings() if f"`{o}`" not in text)
    assert not missing, f"docs/cli.md lacks {missing}: run `python tools/cli_reference.py`"
