"""The parts of docs/*.md that are generated from the code, so they cannot drift from it.

The generated Markdown is committed, so the pages read whole in a repository browser, and
``tests/docs/test_pages.py`` fails when it is stale. Regenerate every page with::

    python docs/hooks/jobqueue_docs.py

A page asks for a generated part with a pair of marker comments; the lines between them
are replaced on every run:

- ``<!-- jobqueue:moves -->`` … ``<!-- /jobqueue:moves -->``: the table of allowed status
  moves, from `jobqueue.models.MOVES`;
- ``<!-- jobqueue:cli -->`` … ``<!-- /jobqueue:cli -->``: ``--help`` of the ``jobqueue``
  command and every subcommand, from the click group itself;
- ``<!-- jobqueue:api NAME -->`` … ``<!-- /jobqueue:api -->``: the signature and docstring
  of ``NAME`` (``jobqueue.queue.JobQueue``, a function, a module) and of its public
  members, read from the source with griffe. ``<!-- jobqueue:api NAME docstring -->`` shows
  only the object's own docstring.

As an MkDocs hook (mkdocs.yml) it warns about a stale page, which fails
``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
REGENERATE = "python docs/hooks/jobqueue_docs.py"

MOVES_MARKER = "<!-- jobqueue:moves -->"
CLI_MARKER = "<!-- jobqueue:cli -->"
API_MARKER = "<!-- jobqueue:api"

_REGION = re.compile(
    r"^<!-- jobqueue:(?P<kind>moves|cli|api)(?P<args>[^>]*?)\s*-->\n"
    r"(?P<body>.*?)"
    r"^<!-- /jobqueue:(?P=kind) -->$",
    re.MULTILINE | re.DOTALL,
)

log = logging.getLogger("mkdocs.plugins.jobqueue_docs")


def moves_table() -> str:
    """A Markdown matrix: one row per status, a check where the move is allowed."""
    from jobqueue.models import MOVES, Status

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
    """Every command's help text under its own heading, in the order `jobqueue --help` lists;
    the commands of a group (``jobqueue limits set``) under its heading, one level down."""
    from jobqueue.cli import cli

    settings = {"max_content_width": 100, **cli.context_settings, "terminal_width": 100}
    root = click.Context(cli, info_name="jobqueue", **settings)
    parts = ["## jobqueue", "", "```text", cli.get_help(root), "```", ""]

    def add(group: click.Group, parent: click.Context, level: int) -> None:
        for name in group.list_commands(parent):
            command = group.get_command(parent, name)
            if command is None or command.hidden:
                continue
            ctx = click.Context(command, info_name=name, parent=parent)
            title = f"{'#' * level} {ctx.command_path}"
            parts.extend([title, "", "```text", command.get_help(ctx), "```", ""])
            if isinstance(command, click.Group):
                add(command, ctx, level + 1)

    add(cli, root, 2)
    return "\n".join(parts).rstrip("\n")


# -- the API reference -----------------------------------------------------------------------

SIGNATURE_WIDTH = 88


class ApiReference:
    """Plain Markdown for objects of the jobqueue package, read from its source by griffe."""

    def __init__(self) -> None:
        import griffe

        loader = griffe.GriffeLoader(search_paths=[str(ROOT / "src")])
        self.package = loader.load("jobqueue")
        loader.resolve_aliases(external=False, implicit=False)

    def get(self, path: str) -> Any:
        name = path.removeprefix("jobqueue.")
        return self.package if name == "jobqueue" else self.package[name]

    def render(self, path: str, *, docstring_only: bool = False, level: int = 3) -> str:
        obj = self.get(path)
        return "\n".join(self._object(obj, level, docstring_only)).strip("\n")

    # one object and its members
    def _object(self, obj: Any, level: int, docstring_only: bool = False) -> Iterator[str]:
        kind = obj.kind.value
        title = obj.name if kind == "module" else self._title(obj)
        yield f"{'#' * level} `{obj.path if kind == 'module' else title}`"
        yield ""
        signature = self._signature(obj)
        if signature:
            yield from ("```python", signature, "```", "")
        doc = self._docstring(obj)
        if doc:
            yield from (doc, "")
        if docstring_only or kind not in ("class", "module"):
            return
        for member in self._members(obj):
            yield from self._object(member, level + 1)

    def _title(self, obj: Any) -> str:
        """``Class.method`` for members of a class, the bare name for the rest."""
        parent = obj.parent
        if parent is not None and parent.kind.value == "class":
            return f"{parent.name}.{obj.name}"
        return str(obj.name)

    def _members(self, obj: Any) -> list[Any]:
        explicit = getattr(obj, "exports", None) if obj.kind.value == "module" else None
        members = []
        for name, member in obj.members.items():
            if member.is_alias or name.startswith("_"):
                continue
            if explicit is not None and name not in explicit:
                continue
            kind = member.kind.value
            if kind == "attribute" and not (member.docstring or "property" in member.labels):
                continue  # instance attributes and constants without a word of their own
            if kind == "module":
                continue
            members.append(member)
        return sorted(members, key=lambda m: m.lineno or 0)

    def _docstring(self, obj: Any) -> str:
        # Each object's own: the async queue's methods carry theirs (tests/queue/test_twins.py).
        return str(obj.docstring.value).strip() if obj.docstring is not None else ""

    def _signature(self, obj: Any) -> str:
        kind = obj.kind.value
        if kind == "class":
            params = [p for p in obj.parameters if p.name != "self"]
            return self._wrap(f"class {obj.name}", params, None)
        if kind == "function":
            params = [p for p in obj.parameters if p.name not in ("self", "cls")]
            prefix = "async def" if "async" in obj.labels else "def"
            if "property" in obj.labels:
                return f"{obj.name}: {obj.returns}" if obj.returns else ""
            return self._wrap(f"{prefix} {obj.name}", params, obj.returns)
        if kind == "attribute":
            annotation = f": {obj.annotation}" if obj.annotation is not None else ""
            return f"{obj.name}{annotation}"
        return ""

    def _wrap(self, head: str, params: list[Any], returns: Any) -> str:
        rendered = self._parameters(params)
        tail = f" -> {_annotation(returns)}" if returns is not None else ""
        one_line = f"{head}({', '.join(rendered)}){tail}"
        if len(one_line) <= SIGNATURE_WIDTH:
            return one_line
        body = "".join(f"    {p},\n" for p in rendered)
        return f"{head}(\n{body}){tail}"

    @staticmethod
    def _parameters(params: list[Any]) -> list[str]:
        out: list[str] = []
        keyword_only_started = False
        for index, param in enumerate(params):
            kind = param.kind.value
            text = param.name
            if kind == "variadic positional":
                text = "*" + text
                keyword_only_started = True
            elif kind == "variadic keyword":
                text = "**" + text
            elif kind == "keyword-only" and not keyword_only_started:
                out.append("*")
                keyword_only_started = True
            if param.annotation is not None:
                text += f": {_annotation(param.annotation)}"
            if param.default is not None and not kind.startswith("variadic"):
                equals = " = " if param.annotation is not None else "="
                text += f"{equals}{param.default}"
            out.append(text)
            next_kind = params[index + 1].kind.value if index + 1 < len(params) else None
            if kind == "positional-only" and next_kind != "positional-only":
                out.append("/")
        return out


def _annotation(annotation: Any) -> str:
    # The queues write ``builtins.list`` because they have a ``list`` method of their own.
    return str(annotation).replace("builtins.", "")


# -- the pages ---------------------------------------------------------------------------


def render_pages(pages: list[Path] | None = None) -> dict[Path, str]:
    """Every page with its generated parts as the code says they are now."""
    api: ApiReference | None = None

    def body(kind: str, args: str) -> str:
        nonlocal api
        if kind == "moves":
            return moves_table()
        if kind == "cli":
            return cli_reference()
        words = args.split()
        if api is None:
            api = ApiReference()
        return api.render(words[0], docstring_only="docstring" in words[1:])

    rendered: dict[Path, str] = {}
    for page in pages if pages is not None else sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        rendered[page] = regenerate(text, body)
    return rendered


def regenerate(text: str, body: Callable[[str, str], str]) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, args = match["kind"], match["args"]
        return (
            f"<!-- jobqueue:{kind}{args} -->\n{body(kind, args.strip())}\n<!-- /jobqueue:{kind} -->"
        )

    return _REGION.sub(replace, text)


def stale_pages() -> list[Path]:
    return [p for p, text in render_pages().items() if p.read_text(encoding="utf-8") != text]


def main() -> int:
    written = []
    for page, text in render_pages().items():
        if page.read_text(encoding="utf-8") != text:
            page.write_text(text, encoding="utf-8")
            written.append(page.relative_to(ROOT).as_posix())
    print("regenerated: " + ", ".join(written) if written else "every generated part is current")
    return 0


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Build with what is committed, and say so when it is stale (``--strict`` fails)."""
    path = DOCS / page.file.src_path
    if _REGION.search(markdown) and render_pages([path])[path] != markdown:
        log.warning(f"{page.file.src_path}: generated parts are stale; run `{REGENERATE}`")
    return markdown


if __name__ == "__main__":
    sys.exit(main())
