"""Model selection: which variant of a method's hyper-parameter grid a table reports (cf. DomainBed's).

Each rule is a small named unit. ``choose`` marks, among the variants of one method in one table row,
the variant(s) to report. Ties go to the first variant in grid order (numbers by value, e.g. k=1 before
k=2), because the variants come sorted that way and ``idxmax`` keeps the first maximum.
"""

from __future__ import annotations

import pandas as pd

from rifle_bench.report.stats import ROW_KEYS


class Selection:
    name: str
    title: str  # the rule, as the table's title states it

    def unavailable(self, variants: pd.DataFrame) -> str | None:
        """Why this rule cannot be applied to these variants; None when it can."""
        return None

    def choose(self, variants: pd.DataFrame) -> pd.Series:
        """A boolean per variant: reported under this rule. ``variants`` is in grid order."""
        raise NotImplementedError


class _BestMean(Selection):
    column: str

    def choose(self, variants: pd.DataFrame) -> pd.Series:
        best = variants.groupby([*ROW_KEYS, "method"], dropna=False)[self.column].idxmax().dropna()
        return pd.Series(variants.index.isin(best), index=variants.index)


class TestSelection(_BestMean):
    """The paper's protocol: the variant with the best mean test accuracy."""

    name = "test"
    title = "best mean test accuracy per method (the paper's protocol: selected on the test set)"
    column = "mean"


SELECTIONS: dict[str, Selection] = {selection.name: selection for selection in (TestSelection(),)}
