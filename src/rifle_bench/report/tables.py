"""The paper's tables: which methods each shows, the tidy results, and each table's grid of cells and caption."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

from rifle_bench.report.labels import dataset_label, in_display_order, method_label, regularizer_label
from rifle_bench.report.render import Cell, Markup
from rifle_bench.report.selection import Selection
from rifle_bench.report.stats import SIGNIFICANCE_LEVEL


@dataclass(frozen=True)
class PaperTable:
    number: int
    methods: tuple[str, ...]  # the method keys of its columns, in order
    subject: str  # what it compares, as its caption says


TABLES = [
    PaperTable(1, ("original", "dropout", "dropconnect", "cnn_dropout", "stochastic_depth", "cyclic_lr",
                   "disturb_label", "rifle"), "algorithmic regularizers"),
    PaperTable(2, ("rifle", "rifle_a", "rifle_b"),
               "RIFLE and its ablations (RIFLE-A: re-initialization only, RIFLE-B: cyclic FC learning rate only)"),
]
RESULT_COLUMNS = ["table", "regularizer", "dataset", "method", "variant",
                  "n", "mean", "std", "chosen", "paper_mean", "paper_std", "delta"]


def load_paper() -> pd.DataFrame:
    """Every number the paper prints (``rifle_bench/paper/paper_table*.csv``) as paper_mean, paper_std."""
    tables = []
    for resource in sorted(resources.files("rifle_bench.paper").iterdir(), key=lambda resource: resource.name):
        if resource.name.startswith("paper_table") and resource.name.endswith(".csv"):
            with resource.open() as csv_file:
                tables.append(pd.read_csv(csv_file))
    return pd.concat(tables, ignore_index=True).rename(columns={"mean": "paper_mean", "std": "paper_std"})


def results_frame(variants: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The tidy results: each variant under every table that shows its method, with the paper's number."""
    per_table = [variants[variants["method"].isin(table.methods)].assign(table=table.number) for table in TABLES]
    results = pd.concat(per_table, ignore_index=True).merge(
        paper, how="left", on=["table", "regularizer", "dataset", "method"])
    results["delta"] = results["mean"] - results["paper_mean"]
    return in_display_order(results, ["table", "regularizer", "dataset", "model", "method", "variant_rank"])


def table_grid(results: pd.DataFrame, paper: pd.DataFrame, table: PaperTable,
               several_models: bool) -> pd.DataFrame | None:
    """Cells of one table: rows (regularizer label, dataset label), one column per method with a chosen variant."""
    chosen = results[(results["table"] == table.number) & results["chosen"]].copy()
    if chosen.empty:
        return None
    row_keys = ["regularizer", "dataset", "model"]
    chosen["bold"] = chosen["mean"] == chosen.groupby(row_keys, dropna=False)["mean"].transform("max")
    methods = [method for method in table.methods if method in set(chosen["method"])]
    paper_cells = {(row.regularizer, row.dataset, row.method): Cell(row.paper_mean, row.paper_std)
                   for row in paper[paper["table"] == table.number].itertuples()}

    rows: dict[tuple[str, str], list[Cell | None]] = {}
    for (regularizer, dataset), dataset_rows in chosen.groupby(["regularizer", "dataset"], sort=False):
        block, name = regularizer_label(regularizer), dataset_label(dataset)
        for model, model_rows in dataset_rows.groupby("model", sort=False, dropna=False):
            by_method = {row.method: row for row in model_rows.itertuples()}
            label = f"{name} ({model})" if several_models else name
            rows[(block, label)] = [_our_cell(by_method[method]) if method in by_method else None
                                    for method in methods]
        paper_row = [paper_cells.get((regularizer, dataset, method)) for method in methods]
        if any(paper_row):
            rows[(block, f"{name} (paper)")] = paper_row

    columns = {method_label(method): [cells[position] for cells in rows.values()]
               for position, method in enumerate(methods)}
    return pd.DataFrame(columns, index=pd.MultiIndex.from_tuples(list(rows)), dtype=object)


def _our_cell(row) -> Cell:
    return Cell(row.mean, row.std, row.bold, row.p_value < SIGNIFICANCE_LEVEL,
                (row.n, row.expected) if row.n < row.expected else None)


def caption(table: PaperTable, selection: Selection, markup: Markup, numbered: bool) -> str:
    number = f"Table {table.number}: " if numbered else ""
    return (
        f"{number}Top-1 test accuracy ({markup.percent}) after the last epoch of {table.subject}, "
        f"mean{markup.plus_minus}std over seeds. "
        f"For each method the hyper-parameter variant with the best mean is reported, as in the paper "
        f"(every variant is in results.csv). Bold: best mean of the row. "
        f"{markup.star}: differs from Original by Welch's t-test, {markup.math(f'p < {SIGNIFICANCE_LEVEL}')}. "
        f"{markup.dagger}(n/e): only n of the e requested seeds are complete. "
        f"(paper) rows: the numbers printed in the paper (ResNet-50)."
    )
