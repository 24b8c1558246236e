"""How --help reads: click's conventions on typer's layout.

Typer writes every value as ``<str>``/``<float>``, flags as ``<bool>`` (so users try
``--quiet true``) and required arguments as ``{model}``. Here an argument is ``MODEL``, an
option's value is ``TEXT``/``NUMBER``/``INTEGER``/``PATH``, a flag shows no value, and a
default is always ``[default: X]``: help text that ends with ``[X]`` (options whose default
comes from a config file) becomes that too. Each verb's examples are its help's epilog.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup

_VALUE = {"str": "TEXT", "float": "NUMBER", "int": "INTEGER", "path": "PATH", "list[str]": "TEXT"}
_TRAILING_DEFAULT = re.compile(r"\s*\[([^\[\]]+)\]\s*$")


def _plain(param: Any, ctx: Any) -> None:
    """Typer's internals move between releases: if they did, its own help stands."""
    if getattr(param, "_nimble_plain", False):
        return
    param._nimble_plain = True
    with contextlib.suppress(Exception):  # a typer release whose help works otherwise
        _rewrite(param, ctx)


def _rewrite(param: Any, ctx: Any) -> None:
    if isinstance(param, TyperArgument):
        param.metavar = param.metavar or (param.name or "arg").upper()
        name = param.metavar + ("..." if param.nargs != 1 else "")
        shown = name if param.required else f"[{name}]"
        # per instance: typer has no setting for either (the name says it: MODEL, PACKAGES)
        vars(param)["_usage_display_name"] = lambda: shown
        vars(param)["display_type_rich"] = lambda ctx=None: ""
    elif hasattr(param, "is_flag"):  # an option (typer ships its own click)
        if param.is_flag:
            param.metavar = ""
        elif param.metavar is None:
            label = str(param.display_type(ctx)).strip("<>")
            param.metavar = _VALUE.get(label, label.upper())
        help_text = param.help or ""
        found = _TRAILING_DEFAULT.search(help_text)
        if found and param.default is None and not param.required:
            # escaped: rich reads a bare [default: X] as a style tag and drops it
            param.help = f"{help_text[: found.start()]} \\[default: {found.group(1)}]"


class PlainCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            _plain(param, ctx)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        for param in self.params:
            _plain(param, ctx)
        return super().collect_usage_pieces(ctx)


class PlainGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            _plain(param, ctx)
        return params


def examples(*lines: str) -> dict[str, Any]:
    """``app.command(**examples(...))``: the verb's examples under its options."""
    body = "\n\n".join(f"  $ {line}" for line in lines)
    return {"epilog": f"[bold]Examples[/bold]\n\n{body}", "cls": PlainCommand}
