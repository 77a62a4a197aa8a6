"""MkDocs hook: pages that are generated from the code, so they cannot drift from it.

A page asks for a generated block with a marker comment on its own line:

- ``<!-- jobqueue:moves -->``: the table of allowed status moves, from `jobqueue.schema.MOVES`;
- ``<!-- jobqueue:cli -->``: ``--help`` of the ``jobqueue`` command and every subcommand,
  from the click group itself (a subcommand added later shows up without a docs edit).
"""

from __future__ import annotations

from typing import Any

import click

MOVES_MARKER = "<!-- jobqueue:moves -->"
CLI_MARKER = "<!-- jobqueue:cli -->"


def moves_table() -> str:
    """A Markdown matrix: one row per status, a check where the move is allowed."""
    from jobqueue.schema import MOVES, Status

    statuses = list(Status)
    lines = [
        "| from \\ to | " + " | ".join(f"`{s.value}`" for s in statuses) + " |",
        "|---|" + "---|" * len(statuses),
    ]
    for source in statuses:
        cells = ["✓" if target in MOVES[source] else "" for target in statuses]
        lines.append(f"| `{source.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cli_reference() -> str:
    """Every command's help text under its own heading, in the order `jobqueue --help` lists."""
    from jobqueue.cli import cli

    settings = {"max_content_width": 100, **cli.context_settings, "terminal_width": 100}
    root = click.Context(cli, info_name="jobqueue", **settings)
    parts = ["## jobqueue", "", "```text", cli.get_help(root), "```", ""]
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=root)
        parts += [f"## jobqueue {name}", "", "```text", command.get_help(ctx), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MOVES_MARKER in markdown:
        markdown = markdown.replace(MOVES_MARKER, moves_table())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
