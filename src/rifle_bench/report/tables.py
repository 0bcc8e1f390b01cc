"""The paper's tables: which methods each shows, the tidy results, and the grids of cells with their captions.

A table is a ``PaperTable`` in ``TABLES`` (a new table is one more entry, and its printed numbers one more
``rifle_bench/paper/paper_table<N>.csv``). Each selection rule gives each table one grid: one cell per method
(``best_grid``) or one row per variant (``variants_grid``); ``optimism_grid`` compares two rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

from rifle_bench.report.grouping import ROW_KEYS
from rifle_bench.report.labels import METHOD_LABELS, dataset_label, in_display_order, method_label, regularizer_label
from rifle_bench.report.render import Cell, Markup
from rifle_bench.report.selection import Selection
from rifle_bench.report.stats import SIGNIFICANCE_LEVEL


@dataclass(frozen=True)
class PaperTable:
    number: int
    methods: tuple[str, ...]  # the method keys of its columns, in order
    subject: str  # what it compares, as its caption says
    in_paper: bool = True  # False: a table of ours, with no printed numbers to show beside
    # Written only when one of these methods ran, or a run used DTNH (empty: whenever one of `methods` ran).
    own_methods: tuple[str, ...] = ()

    def shown(self, variants: pd.DataFrame) -> bool:
        if not self.own_methods:
            return True
        return (variants["method"].isin(self.own_methods).any()
                or variants["setting"].str.contains("never_hurt=True", regex=False).any())


TABLES = [
    PaperTable(1, ("original", "dropout", "dropconnect", "cnn_dropout", "stochastic_depth", "cyclic_lr",
                   "disturb_label", "rifle"), "algorithmic regularizers"),
    PaperTable(2, ("rifle", "rifle_a", "rifle_b"),
               "RIFLE and its ablations (RIFLE-A: re-initialization only, RIFLE-B: cyclic FC learning rate only)"),
    PaperTable(3, ("original", "rifle", "keep_imagenet_fc", "random_freeze"),
               "the related methods of the seed papers beside Original and RIFLE (KeepFC: the ImageNet FC layer "
               "kept, Shermin et al. 2019; RandFreeze: random layer freezing with a Moore-Penrose FC refinement, "
               "Zhang et al. 2025; DTNH, Wan et al. 2019, is the rows regularizer.never_hurt=True); no paper prints "
               "numbers for these methods on these datasets", in_paper=False,
               own_methods=("keep_imagenet_fc", "random_freeze")),
]
# results.csv; "model" and "setting" follow "dataset" when the runs differ in them.
RESULT_COLUMNS = ["table", "regularizer", "dataset", "method", "variant", "n", "mean", "std", "val_mean", "val_std",
                  "chosen", "chosen_val", "paper_mean", "paper_std", "delta", "fingerprint"]


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
    per_table = [variants[variants["method"].isin(table.methods)].assign(table=table.number)
                 for table in TABLES if table.shown(variants)]
    results = pd.concat(per_table, ignore_index=True).merge(
        paper, how="left", on=["table", "regularizer", "dataset", "method"])
    results["delta"] = results["mean"] - results["paper_mean"]
    return in_display_order(results, ["table", "regularizer", "dataset", "model", "setting", "method", "variant_rank"])


def result_columns(results: pd.DataFrame) -> list[str]:
    columns = RESULT_COLUMNS.copy()
    after_dataset = columns.index("dataset") + 1
    if results["setting"].ne("").any():
        columns.insert(after_dataset, "setting")
    if _several_models(results):
        columns.insert(after_dataset, "model")
    return columns


def best_grid(results: pd.DataFrame, paper: pd.DataFrame, table: PaperTable,
              selection: Selection) -> pd.DataFrame | None:
    """One cell per method (its chosen variant) and row (regularizer label, dataset label), paper rows below ours."""
    rows_of_table = results[results["table"] == table.number]
    chosen = rows_of_table[rows_of_table[f"chosen_{selection.name}"]].copy()
    if chosen.empty:
        return None
    chosen["bold"] = chosen["mean"] == chosen.groupby(ROW_KEYS, dropna=False)["mean"].transform("max")
    chosen["p_value"] = chosen[f"p_value_{selection.name}"]
    methods = [method for method in table.methods if method in set(chosen["method"])]
    paper_cells = {(row.regularizer, row.dataset, row.method): Cell(row.paper_mean, row.paper_std)
                   for row in paper[paper["table"] == table.number].itertuples()}
    several_models = _several_models(results)

    rows: dict[tuple[str, str], list[Cell | None]] = {}
    for (regularizer, dataset), dataset_rows in chosen.groupby(["regularizer", "dataset"], sort=False):
        block = regularizer_label(regularizer)
        for (model, setting), row_runs in dataset_rows.groupby(["model", "setting"], sort=False, dropna=False):
            by_method = {row.method: row for row in row_runs.itertuples()}
            rows[(block, _row_label(dataset, model, setting, several_models))] = [
                _our_cell(by_method[method]) if method in by_method else None for method in methods]
        paper_row = [paper_cells.get((regularizer, dataset, method)) for method in methods]
        if any(paper_row):
            rows[(block, f"{dataset_label(dataset)} (paper)")] = paper_row

    columns = {method_label(method): [cells[position] for cells in rows.values()]
               for position, method in enumerate(methods)}
    return pd.DataFrame(columns, index=pd.MultiIndex.from_tuples(list(rows)), dtype=object)


def variants_grid(results: pd.DataFrame, table: PaperTable, selection: Selection) -> pd.DataFrame | None:
    """One row per variant (regularizer, dataset, method, variant): test and, where measured, validation accuracy."""
    shown = results[(results["table"] == table.number) & results[f"chosen_{selection.name}"]].copy()
    if shown.empty:
        return None
    shown["bold"] = False
    shown["p_value"] = shown[f"p_value_{selection.name}"]
    shown = in_display_order(shown, ["regularizer", "dataset", "model", "setting", "method", "variant_rank"])
    several_models = _several_models(results)
    index = [(regularizer_label(row.regularizer), _row_label(row.dataset, row.model, row.setting, several_models),
              method_label(row.method), row.variant) for row in shown.itertuples()]
    columns = {"Test": [_our_cell(row) for row in shown.itertuples()]}
    if shown["val_mean"].notna().any():
        columns["Validation"] = [Cell(row.val_mean, row.val_std) if row.val_n else None for row in shown.itertuples()]
    return pd.DataFrame(columns, index=pd.MultiIndex.from_tuples(index), dtype=object)


def optimism_frame(variants: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Per row and method: the test accuracy reported under rule ``first`` minus under rule ``second``."""
    def reported(rule: str) -> pd.Series:
        return variants[variants[f"chosen_{rule}"]].set_index([*ROW_KEYS, "method"])["mean"]

    optimism = (reported(first) - reported(second)).dropna().rename("optimism").reset_index()
    return in_display_order(optimism, ["regularizer", "dataset", "model", "setting", "method"])


def optimism_grid(optimism: pd.DataFrame) -> pd.DataFrame | None:
    """Rows (regularizer label, dataset label), one column per method: ``+0.42`` points."""
    if optimism.empty:
        return None
    methods = [method for method in [*METHOD_LABELS, *sorted(set(optimism["method"]) - set(METHOD_LABELS))]
               if method in set(optimism["method"])]
    several_models = optimism["model"].nunique(dropna=False) > 1
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for row in optimism.itertuples():
        key = (regularizer_label(row.regularizer), _row_label(row.dataset, row.model, row.setting, several_models))
        rows.setdefault(key, {})[row.method] = f"{row.optimism:+.2f}"
    columns = {method_label(method): [cells.get(method) for cells in rows.values()] for method in methods}
    return pd.DataFrame(columns, index=pd.MultiIndex.from_tuples(list(rows)), dtype=object)


def _several_models(results: pd.DataFrame) -> bool:
    return results["model"].nunique(dropna=False) > 1


def _row_label(dataset: str, model: str, setting: str, several_models: bool) -> str:
    label = dataset_label(dataset)
    if several_models:
        label += f" ({model})"
    if setting:
        label += f" [{setting}]"
    return label


def _our_cell(row) -> Cell:
    return Cell(row.mean, row.std, row.bold, row.p_value < SIGNIFICANCE_LEVEL,
                (row.n, row.expected) if row.n < row.expected else None)


def _marks(markup: Markup, with_paper: bool, with_bold: bool, settings: bool) -> str:
    marks = ["Bold: best mean of the row."] if with_bold else []
    marks += [f"{markup.star}: differs from Original by Welch's t-test, {markup.math(f'p < {SIGNIFICANCE_LEVEL}')}.",
              f"{markup.dagger}(n/e): only n of the e requested seeds are complete."]
    if settings:
        marks.append("[key=value]: runs that differ in that setting, never pooled.")
    if with_paper:
        marks.append("(paper) rows: the numbers printed in the paper (ResNet-50).")
    return " ".join(marks)


def caption(table: PaperTable, selection: Selection, markup: Markup, numbered: bool, settings: bool) -> str:
    """The table's title (its number and selection rule), what its cells are, and its marks."""
    number = f"Table {table.number}, " if numbered else ""
    measured = f"Top-1 test accuracy ({markup.percent}) after the last epoch of {table.subject}"
    if selection.reports_variants:
        return (f"{number}selection {selection.name}: {selection.title}. {measured}, and the validation accuracy "
                f"where a validation split was held out, mean{markup.plus_minus}std over seeds. "
                + _marks(markup, with_paper=False, with_bold=False, settings=settings))
    note = f"{selection.note} " if selection.note else ""
    return (f"{number}selection {selection.name}: {selection.title}. {measured}, "
            f"mean{markup.plus_minus}std over seeds; every variant is in results.csv. {note}"
            + _marks(markup, with_paper=table.in_paper, with_bold=True, settings=settings))


def optimism_caption(markup: Markup, numbered: bool, first: Selection, second: Selection) -> str:
    title = "Optimism: " if numbered else ""
    return (f"{title}per method, the mean test accuracy reported under selection {first.name} minus under selection "
            f"{second.name}, in points: how much choosing the variant on the test set inflates the number "
            f"(0.00: both rules choose the same variant).")
