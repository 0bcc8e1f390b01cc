"""Model selection: which variant of a method's hyper-parameter grid a table reports (cf. DomainBed's).

Each rule is a small named unit: ``choose`` marks, among the variants of each method in each table row,
the variant(s) to report, and every table states its rule (``title``). A tie goes to the first variant in
grid order (numbers by value: k=1 before k=2), because the variants come sorted that way and ``idxmax``
keeps the first maximum.
"""

from __future__ import annotations

import pandas as pd

from rifle_bench.report.grouping import ROW_KEYS


class Selection:
    name: str
    title: str  # the rule, as the tables state it
    note: str = ""  # what its tables leave out, if anything
    reports_variants: bool = False  # True: every variant is a row of its own, not one cell per method

    def unavailable(self, variants: pd.DataFrame) -> str | None:
        """Why the rule cannot apply to these variants; None when it can."""
        return None

    def choose(self, variants: pd.DataFrame) -> pd.Series:
        """A boolean per variant: reported under this rule. ``variants`` comes in grid order."""
        raise NotImplementedError


class _BestMean(Selection):
    column: str  # the mean that decides

    def choose(self, variants: pd.DataFrame) -> pd.Series:
        ranked = variants.dropna(subset=[self.column])
        best = ranked.groupby([*ROW_KEYS, "method"], dropna=False)[self.column].idxmax()
        return pd.Series(variants.index.isin(best), index=variants.index)


class TestSelection(_BestMean):
    """The paper's protocol: the variant with the best mean test accuracy (selected on the test set)."""

    name = "test"
    title = "the variant with the best mean test accuracy (the paper's protocol: selected on the test set)"
    column = "mean"


class ValidationSelection(_BestMean):
    """The variant with the best mean validation accuracy, reported with its test accuracy."""

    name = "val"
    title = "the variant with the best mean validation accuracy, reported with its test accuracy"
    column = "val_mean"
    note = "Rows whose runs held out no validation split are left out."

    def unavailable(self, variants: pd.DataFrame) -> str | None:
        if variants["val_mean"].notna().any():
            return None
        return "no complete run has a validation accuracy; train with dataset.val_fraction > 0 (e.g. 0.1)"


class NoSelection(Selection):
    """Every variant of the grid reported, one row each."""

    name = "none"
    title = "every variant of each method's grid, one row each (no selection)"
    reports_variants = True

    def choose(self, variants: pd.DataFrame) -> pd.Series:
        return pd.Series(True, index=variants.index)


SELECTIONS: dict[str, Selection] = {
    selection.name: selection for selection in (TestSelection(), ValidationSelection(), NoSelection())}
