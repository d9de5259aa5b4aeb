"""Every `--help` says complete, true sentences at any terminal width.

Rendered help of every command at 80 and 200 columns: no `<bool>` after a flag (it takes no value), no
doubled brackets in the usage line, no pointer to docs/ files a pip user does not have, every help text
shown whole and ending as a sentence, and no line that stops early in the middle of a sentence (typer's
"rich" markup mode kept each source line break of a docstring as a hard break).
"""
import re

import pytest
import typer
from typer.testing import CliRunner

from navitrain.cli import app
from navitrain.cli._command import DEFAULT_PLOT, fill_optional_values

COMMANDS = ("doctor", "explain", "probe", "bench", "advise", "run", "report")
WIDTHS = (80, 200)
_BOX = re.compile(r"[│╭╮╰╯─]")


def _help(args: list[str], width: int) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    """Rendered text with box drawing and code quotes removed and all whitespace as single spaces."""
    return " ".join(_BOX.sub(" ", text.replace("`", "")).split())


def _click_command(name: str | None):
    group = typer.main.get_command(app)
    return group if name is None else group.commands[name]


def _help_texts(name: str | None) -> list[str]:
    """The command's own help paragraphs and every visible parameter's help, as written in the source."""
    command = _click_command(name)
    texts = [p for p in re.split(r"\n\s*\n", command.help or "") if p.strip()]
    for param in command.params:
        if getattr(param, "help", None) and not getattr(param, "hidden", False):
            texts.append(param.help)
    return texts


def _premature_breaks(lines: list[str], width: int) -> list[tuple[str, str]]:
    """Pairs of consecutive lines of one paragraph (`width` columns wide) where the next line's first word
    would have fitted on the first: the break was not made by wrapping."""
    lines = [line.rstrip() for line in lines]
    out = []
    for first, second in zip(lines, lines[1:]):
        if first.strip() and second.strip():
            word = second.split()[0]
            if len(first) + 1 + len(word) <= width:
                out.append((first.strip(), second.strip()))
    return out


def _commands_panel_rows(text: str) -> tuple[dict[str, list[str]], int]:
    """The root help's Commands panel: command -> its description's lines (as rendered, unpadded), and
    the description column's width."""
    rows: dict[str, list[str]] = {}
    inside, current, width = False, None, 0
    for line in text.splitlines():
        if line.startswith("╭─ Commands"):
            inside = True
            continue
        if inside and line.startswith("╰"):
            break
        if inside:
            body = line.strip().strip("│").rstrip()
            m = re.match(r" (\S+)( +)(.*)", body)
            if m and m.group(1) in COMMANDS:
                current = m.group(1)
                rows[current] = [m.group(3)]
                start = line.index(m.group(3)) if m.group(3) else len(line)
                width = line.rindex("│") - 1 - start  # the column ends one space before the border
            elif current:
                rows[current].append(body.strip())
    return rows, width


def _description_paragraphs(text: str) -> list[list[str]]:
    """The lines between the usage line and the first panel, split into paragraphs."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
    block = []
    for line in lines[start:]:
        if line.startswith("╭"):
            break
        block.append(line.rstrip())
    paragraphs, current = [], []
    for line in block:
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    return paragraphs + ([current] if current else [])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", (None, *COMMANDS))
def test_help_shows_no_value_for_flags_no_double_brackets_and_no_repository_paths(name, width):
    text = _help([name] if name else [], width)
    assert "<bool>" not in text
    assert "[[" not in text and "]]" not in text
    assert "docs/" not in text, "a pip install has no docs/ folder: say it inline"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", (None, *COMMANDS))
def test_every_help_text_is_shown_whole_and_ends_as_a_sentence(name, width):
    flat = _flat(_help([name] if name else [], width))
    for source in _help_texts(name):
        assert source.rstrip().endswith((".", "?", "!")), f"not a full sentence: {source!r}"
        assert _flat(source) in flat, f"help text cut or changed in the rendering: {source!r}"


@pytest.mark.parametrize("width", WIDTHS)
def test_the_command_list_shows_each_summary_whole_without_early_breaks(width):
    text = _help([], width)
    rows, column = _commands_panel_rows(text)
    assert set(rows) == set(COMMANDS) and column > 20
    for name, lines in rows.items():
        summary = " ".join(" ".join(lines).split())
        assert summary.endswith("."), f"{name}: {summary!r}"
        breaks = _premature_breaks(lines, column)
        assert not breaks, f"{name} breaks mid-sentence: {breaks}"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", COMMANDS)
def test_command_descriptions_wrap_only_at_the_width(name, width):
    text = _help([name], width)
    for paragraph in _description_paragraphs(text):
        breaks = _premature_breaks(paragraph, width - 1)  # the block is indented by one space
        assert not breaks, f"{name} --help breaks mid-sentence: {breaks}"


def test_bench_help_names_every_workload():
    from navitrain.bench import workloads

    for width in WIDTHS:
        text = _help(["bench"], width)
        for name in workloads.names():
            assert re.search(rf"\b{re.escape(name)}\b", text), f"bench --help hides the {name} workload"


def test_a_bare_plot_option_takes_the_default_file():
    assert fill_optional_values(["--plot"]) == ["--plot", DEFAULT_PLOT]
    assert fill_optional_values(["--plot", "--json"]) == ["--plot", DEFAULT_PLOT, "--json"]
    assert fill_optional_values(["--plot", "my.svg"]) == ["--plot", "my.svg"]
    assert fill_optional_values(["--plot=my.svg"]) == ["--plot=my.svg"]
    assert fill_optional_values(["--", "--plot"]) == ["--", "--plot"]


@pytest.mark.parametrize("command", ("bench", "run"))
def test_bench_and_run_accept_plot_without_a_file_name(command):
    # --steps 1 is refused after parsing, before any work: reaching that message proves --plot parsed.
    result = CliRunner().invoke(app, [command, "--plot", "--steps", "1"])
    assert result.exit_code == 2
    assert "requires an argument" not in result.output
    assert "--steps" in result.output
