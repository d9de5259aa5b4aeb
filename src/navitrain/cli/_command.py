"""The click command classes every `navitrain` command uses (set once in cli/__init__.py).

Two things typer does not do for us:
- Its rich help prints a type column for every option, `<bool>` included, so `--json <bool>` reads as if
  the flag took a value. A flag's metavar is what that column shows; an empty one shows nothing.
- An option whose value may be left out (`navitrain bench --plot` draws to a default file): typer has
  no optional-value options, so the default is filled in before parsing, where click lets a command
  see its arguments (`parse_args`).
"""
from __future__ import annotations

import typer.core

# Options that may be given without a value, and the value they then take. The default file name is
# printed when the chart is written, so the user learns where it went.
DEFAULT_PLOT = "navitrain-bench.png"
OPTIONAL_VALUES = {"--plot": DEFAULT_PLOT}


def _hide_flag_types(params: list) -> list:
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""
    return params


def fill_optional_values(args: list[str], optional: dict[str, str] = OPTIONAL_VALUES) -> list[str]:
    """`--plot` at the end or before another option becomes `--plot navitrain-bench.png`.
    `--plot FILE` and `--plot=FILE` are left alone; so is everything after `--`."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        out.append(arg)
        if arg in optional:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or following.startswith("-"):
                out.append(optional[arg])
    return out


class NavitrainCommand(typer.core.TyperCommand):
    def get_params(self, ctx):
        return _hide_flag_types(super().get_params(ctx))

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, fill_optional_values(list(args)))


class NavitrainGroup(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _hide_flag_types(super().get_params(ctx))
