"""Write the option tables of docs/cli.md ("Every option") from the ``mobilesam`` argument parser.

    python tools/cli_reference.py          # rewrites the part of docs/cli.md between the markers

tests/test_readme.py checks that docs/cli.md names every option the parser has, so a new option
fails the tests until this script has been run again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BEGIN, END = "<!-- cli-reference: begin (tools/cli_reference.py) -->", "<!-- cli-reference: end -->"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reference() -> str:
    from napari_mobilesam.cli import build_parser

    out = []
    for name, sub in _subcommands(build_parser()).items():
        out += [f"### `mobilesam {name}`", "", _cell(sub.description or sub.format_usage().strip()), ""]
        out += ["| option | default | meaning |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest.upper()}`"
            default = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default}`"
            out.append(f"| {flags} | {_cell(default)} | {_cell(action.help or '')} |")
        out.append("")
    return "\n".join(out)


def option_strings() -> set[str]:
    """Every ``--option`` of every subcommand."""
    from napari_mobilesam.cli import build_parser

    return {s for sub in _subcommands(build_parser()).values() for a in sub._actions for s in a.option_strings
            if s.startswith("--") and s != "--help"}


def main() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n\n{reference()}\n{END}{tail}")


if __name__ == "__main__":
    main()
