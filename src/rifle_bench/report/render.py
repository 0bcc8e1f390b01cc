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
    """A grid of cells with a two-level row index (block, label) as a captioned pipe table."""
    rows, previous_block = [], None
    for (block, label), cells in zip(grid.index, grid.itertuples(index=False)):
        rows.append([block if block != previous_block else "", label, *(format_cell(cell, MARKDOWN) for cell in cells)])
        previous_block = block
    return f"{caption}\n\n{pipe_table([*index_names, *grid.columns], rows)}\n"


def latex(grid: pd.DataFrame, caption: str, label: str) -> str:
    """The same grid as a booktabs table (pandas Styler), the block label on its first row only."""
    text_grid = grid.apply(lambda column: column.map(lambda cell: format_cell(cell, LATEX)))
    text = text_grid.style.format_index(escape="latex", axis=0).to_latex(
        caption=caption,
        label=label,
        position_float="centering",
        hrules=True,
        multirow_align="naive",  # no multirow package needed
        clines="skip-last;data",
    )
    # Styler separates the blocks with \cline; booktabs wants \midrule, and no rule above \bottomrule.
    cline = f"\\cline{{1-{grid.shape[1] + 2}}}\n"
    return text.replace(cline + "\\bottomrule", "\\bottomrule").replace(cline, "\\midrule\n")
