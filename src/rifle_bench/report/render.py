"""Table cells and grids as Markdown and LaTeX: one formatter, two markups."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import pandas as pd


class Cell(NamedTuple):
    mean: float
    std: float
    bold: bool = False
    significant: bool = False
    seeds_short: tuple[int, int] | None = None  # (n, expected) when fewer seeds than asked for


class Markup(NamedTuple):
    plus_minus: str
    no_std: str
    bold: Callable[[str], str]
    star: str
    dagger: str
    percent: str
    math: Callable[[str], str]
    text: Callable[[str], str]  # plain text made safe


def _escape_latex(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(character, character) for character in text)


_LATEX_SPECIALS = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                   "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"}
MARKDOWN = Markup("±", "–", "**{}**".format, "*", "†", "%", str, str)
LATEX = Markup("$\\pm$", "--", "\\textbf{{{}}}".format, "$^{*}$", "$^\\dagger$", "\\%", "${}$".format, _escape_latex)


def format_cell(cell: Cell | str | None, markup: Markup) -> str:
    """``mean±std``, bold if asked, ``*`` when significant, ``†(n/e)`` when seeds are missing; "" for no cell."""
    if cell is None:
        return ""
    if isinstance(cell, str):
        return markup.text(cell)
    std = markup.no_std if math.isnan(cell.std) else f"{cell.std:.2f}"
    text = f"{cell.mean:.2f}{markup.plus_minus}{std}"
    if cell.bold:
        text = markup.bold(text)
    if cell.significant:
        text += markup.star
    if cell.seeds_short:
        text += "{}({}/{})".format(markup.dagger, *cell.seeds_short)
    return text


def pipe_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def markdown(grid: pd.DataFrame, index_names: list[str], caption: str) -> str:
    """A grid of cells with a row MultiIndex as a captioned pipe table; an index value repeated from the row
    above (under the same outer values) is left blank, the innermost level always shown."""
    rows, previous = [], None
    for index, cells in zip(grid.index, grid.itertuples(index=False)):
        shown = [value if previous is None or index[:level + 1] != previous[:level + 1] or level == len(index) - 1
                 else "" for level, value in enumerate(index)]
        rows.append([*shown, *(format_cell(cell, MARKDOWN) for cell in cells)])
        previous = index
    return f"{caption}\n\n{pipe_table([*index_names, *grid.columns], rows)}\n"


def latex(grid: pd.DataFrame, caption: str, label: str) -> str:
    """The same grid as a booktabs table (pandas Styler), each index value on its first row only."""
    text_grid = grid.apply(lambda column: column.map(lambda cell: format_cell(cell, LATEX)))
    text = text_grid.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1).to_latex(
        caption=caption,
        label=label,
        position_float="centering",
        hrules=True,
        multirow_align="naive",  # no multirow package needed
        clines="skip-last;data",
    )
    # Styler separates index blocks with lines of \cline: booktabs wants \midrule between the outermost blocks
    # (and no rule above \bottomrule); the inner levels need no rule.
    lines = text.splitlines(keepends=True)
    kept = []
    for line, following in zip(lines, [*lines[1:], ""]):
        if line.startswith("\\cline"):
            if line.startswith("\\cline{1-") and not following.startswith("\\bottomrule"):
                kept.append("\\midrule\n")
        else:
            kept.append(line)
    return "".join(kept)
