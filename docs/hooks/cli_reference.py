"""mkdocs hook: the CLI reference page is generated from splice's argparse parsers at every build.

A page holding the line ``<!-- cli-reference -->`` gets, in its place, ``splice --help`` and every
command's ``--help``, exactly as argparse prints them, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def cli_reference() -> str:
    """Markdown: one section per command, its help text in a code block."""
    from splice.cli import build_parser

    os.environ.setdefault("COLUMNS", "100")  # argparse wraps at the terminal's width: fix it for the page
    parser = build_parser()
    sections = ["## splice", "", "```text", parser.format_help().rstrip(), "```", ""]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        sections += [f"## splice {name}", "", "```text", command.format_help().rstrip(), "```", ""]
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        for sub_name, sub in (nested[0].choices.items() if nested else ()):
            sections += [f"### splice {name} {sub_name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(sections)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
