"""The report's figures, drawn with matplotlib (Agg, no display) as PNG and PDF beside the tables.

- ``figure_curves``: the paper's Fig. 1, train and test top-1 per epoch (mean over seeds, band of one std), one
  row of panels per table row (dataset, model, regularizer), one line per method; for runs that evaluated the
  test set on several epochs (``trainer.eval_every=1``).
- ``figure_grad_norms``: the paper's Fig. 2, per-stage gradient norms per epoch (``trainer.grad_norms=true``),
  one panel per table row and method, one line per stage, head re-initializations marked.
- ``figure_table<N>``: each paper table's methods as bars (mean ± std over seeds of the reported variant) per
  dataset, the paper's value marked where it prints one.

Each ``plot_*`` function draws its figure and returns the tidy frame of what it plotted (``runs`` names the
run directories behind every point), or None when the runs hold nothing to plot.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from rifle_bench.report.grouping import ROW_KEYS, VARIANT_KEYS
from rifle_bench.report.labels import dataset_label, in_display_order, method_label, regularizer_label
from rifle_bench.results import METRICS_FILE, write_atomic

matplotlib.use("Agg")  # files only; never a window, also where a display exists
FORMATS = ("png", "pdf")
DPI = 110
GRAD_PREFIX = "grad_norm_"


def write_figures(runs: pd.DataFrame, results: pd.DataFrame, chosen: str, out_dir: Path) -> list[Path]:
    """Every figure the runs allow, as PNG and PDF in ``out_dir``; returns the files written.

    ``runs``: the complete runs, one per experiment and seed (``grouping.distinct_runs``); ``results``: the tidy
    results of the tables, whose boolean column ``chosen`` marks each method's reported variant."""
    out_dir = Path(out_dir)
    metrics = read_metrics(runs)
    written = []
    for stem, plot in (("figure_curves", lambda path: plot_learning_curves(metrics, path)),
                       ("figure_grad_norms", lambda path: plot_grad_norms(metrics, path))):
        if plot(out_dir / stem) is not None:
            written += [out_dir / f"{stem}.{fmt}" for fmt in FORMATS]
    for table in sorted(results["table"].unique()) if len(results) else []:
        stem = out_dir / f"figure_table{table}"
        if plot_table_bars(results[results["table"] == table], chosen, f"Table {table}", stem) is not None:
            written += [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    return written


def read_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every run, one row per (run, epoch), with the run's table coordinates and seed."""
    frames = []
    for run in runs.itertuples(index=False):
        path = Path(run.run_dir) / METRICS_FILE
        if path.exists():
            frame = pd.read_csv(path)
            frames.append(frame.assign(**{key: getattr(run, key) for key in VARIANT_KEYS},
                                       seed=run.seed, run_dir=str(run.run_dir)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*VARIANT_KEYS, "seed", "epoch"])


def _panel_titles(frame: pd.DataFrame) -> dict[tuple, str]:
    """A title per table row: the dataset, plus the model, regularizer and setting where the runs differ in them."""
    rows = frame[ROW_KEYS].drop_duplicates()
    titles = {}
    for row in rows.itertuples(index=False):
        parts = [dataset_label(row.dataset)]
        if rows["model"].nunique() > 1:
            parts.append(str(row.model))
        if rows["regularizer"].nunique() > 1:
            parts.append(regularizer_label(row.regularizer))
        if row.setting:
            parts.append(row.setting)
        titles[tuple(row)] = ", ".join(parts)
    return titles


def _series_label(method: str, variant: str) -> str:
    return method_label(method) if variant in ("", "-") else f"{method_label(method)} ({variant})"


def _mean_over_seeds(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per table row, method variant, column and epoch: mean, std (ddof 1; NaN for one seed), seeds and runs."""
    long = frame.melt(id_vars=[*VARIANT_KEYS, "epoch", "run_dir"], value_vars=columns, var_name="column").dropna(
        subset=["value"])
    grouped = long.groupby([*VARIANT_KEYS, "column", "epoch"], sort=False, dropna=False)
    stats = grouped["value"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    stats["runs"] = grouped["run_dir"].agg(lambda dirs: tuple(sorted(dirs)))
    stats = stats.reset_index()
    stats["series"] = [_series_label(m, v) for m, v in zip(stats["method"], stats["variant"])]
    return in_display_order(stats, [*ROW_KEYS, "method", "column", "epoch"]).reset_index(drop=True)


def plot_learning_curves(metrics: pd.DataFrame, stem: Path) -> pd.DataFrame | None:
    """Fig. 1: train and test top-1 per epoch, one row of two panels per table row, one line per method."""
    if "test_acc" not in metrics or metrics.groupby("run_dir")["test_acc"].count().max() < 2:
        return None  # no run evaluated the test set more than once: no curve to draw
    curves = _mean_over_seeds(metrics, ["train_acc", "test_acc"])
    titles = _panel_titles(curves)
    series = list(dict.fromkeys(curves["series"]))
    colors = {label: f"C{position % 10}" for position, label in enumerate(series)}
    figure = Figure(figsize=(10, 0.6 + 3.0 * len(titles)), layout="constrained")
    axes = figure.subplots(len(titles), 2, squeeze=False, sharex=True)
    for (row_key, title), row_axes in zip(titles.items(), axes):
        row = curves[(curves[ROW_KEYS].apply(tuple, axis=1) == row_key)]
        for ax, column, split in zip(row_axes, ("train_acc", "test_acc"), ("train (running mean over the epoch)",
                                                                           "test")):
            for label, line in row[row["column"] == column].groupby("series", sort=False):
                _line_with_band(ax, line, colors[label], label)
            ax.set_title(f"{title}: {split}", fontsize=10)
            ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    handles = [Line2D([], [], color=colors[label], label=label) for label in series]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(series), 4),
                  title="mean over seeds, band: ±1 std")
    figure.suptitle("Learning curves (cf. RIFLE paper, Fig. 1)")
    _save(figure, stem)
    return curves.rename(columns={"column": "split"}).replace({"split": {"train_acc": "train", "test_acc": "test"}})


def plot_grad_norms(metrics: pd.DataFrame, stem: Path) -> pd.DataFrame | None:
    """Fig. 2: the gradient norm of each stage's last 3x3 conv per epoch, one panel per table row and method."""
    stages = [column for column in metrics.columns if column.startswith(GRAD_PREFIX)]
    if not stages or metrics[stages].notna().sum().sum() == 0:
        return None
    norms = _mean_over_seeds(metrics, stages)
    norms["stage"] = norms.pop("column").str.removeprefix(GRAD_PREFIX)
    stage_order = list(dict.fromkeys(column.removeprefix(GRAD_PREFIX) for column in stages))
    stage_colors = dict(zip(stage_order, matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(stage_order)))))
    titles = _panel_titles(norms)
    series = list(dict.fromkeys(norms["series"]))
    figure = Figure(figsize=(4.6 * len(series) + 0.5, 0.9 + 3.0 * len(titles)), layout="constrained")
    axes = figure.subplots(len(titles), len(series), squeeze=False, sharex=True, sharey="row")
    reinit_epochs = _reinit_epochs(metrics)
    for (row_key, title), row_axes in zip(titles.items(), axes):
        row = norms[(norms[ROW_KEYS].apply(tuple, axis=1) == row_key)]
        for ax, label in zip(row_axes, series):
            panel = row[row["series"] == label]
            for stage in stage_order:
                line = panel[panel["stage"] == stage]
                ax.plot(line["epoch"], line["mean"], color=stage_colors[stage], linewidth=1.6, marker="o",
                        markersize=2.5)
            for epoch in reinit_epochs.get(row_key + (label,), []):
                ax.axvline(epoch, color="0.4", linestyle=":", linewidth=1)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_log_label))
            ax.yaxis.set_minor_formatter(FuncFormatter(_plain_log_label))
            ax.set_title(f"{title}: {label}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        row_axes[0].set_ylabel("gradient norm ‖∂L/∂W‖_F")
    for ax in axes[-1]:
        ax.set_xlabel("epoch (norm on its first mini-batch)")
    handles = [Line2D([], [], color=stage_colors[stage], label=stage) for stage in stage_order]
    handles.append(Line2D([], [], color="0.4", linestyle=":", label="FC re-initialized"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8),
                  title="last 3x3 conv of each stage (mean over seeds)")
    figure.suptitle("Gradient norms per layer (cf. RIFLE paper, Fig. 2)")
    _save(figure, stem)
    return norms


def _plain_log_label(value: float, _position) -> str:
    """0.3 rather than 3x10^-1, on the ticks 1, 2, 3, 5 of each decade only (the others would crowd)."""
    leading = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if any(np.isclose(leading, digit) for digit in (1, 2, 3, 5)) else ""


def _reinit_epochs(metrics: pd.DataFrame) -> dict[tuple, list[int]]:
    """Per table row and series, the epochs that began with a head re-initialization (the same for every seed)."""
    if "head_reinit" not in metrics:
        return {}
    marked = metrics[metrics["head_reinit"] == 1]
    return {(*key[:len(ROW_KEYS)], _series_label(*key[len(ROW_KEYS):])): sorted(set(group["epoch"]))
            for key, group in marked.groupby([*ROW_KEYS, "method", "variant"], dropna=False)}


def plot_table_bars(results: pd.DataFrame, chosen: str, name: str, stem: Path) -> pd.DataFrame | None:
    """A table's reported variants as bars per dataset (mean ± std over seeds), the paper's value as a black bar."""
    bars = results[results[chosen].fillna(False).astype(bool)].copy()
    if bars.empty:
        return None
    for key in ROW_KEYS:  # results.csv leaves out model and setting where every run shares them
        bars[key] = bars[key].fillna("") if key in bars else ""
    bars["series"] = bars["method"].map(method_label)
    bars["row"] = bars[ROW_KEYS].apply(tuple, axis=1)
    titles = _panel_titles(bars)
    blocks = list(dict.fromkeys(bars["regularizer"]))
    methods = list(dict.fromkeys(bars["series"]))
    colors = {label: f"C{position % 10}" for position, label in enumerate(methods)}
    n_groups = bars.groupby("regularizer")["row"].nunique().max()
    figure = Figure(figsize=(max(6.0, 1.0 + 0.35 * len(methods) * n_groups + 1.2 * n_groups), 0.9 + 3.2 * len(blocks)),
                    layout="constrained")
    axes = figure.subplots(len(blocks), 1, squeeze=False)[:, 0]
    width = 0.8 / len(methods)
    for ax, block in zip(axes, blocks):
        rows = bars[bars["regularizer"] == block]
        keys = list(dict.fromkeys(rows["row"]))
        for position, label in enumerate(methods):
            of_method = rows[rows["series"] == label]
            x = np.array([keys.index(key) for key in of_method["row"]]) + (position - (len(methods) - 1) / 2) * width
            ax.bar(x, of_method["mean"], width, yerr=of_method["std"].fillna(0), capsize=3, color=colors[label],
                   label=label)
            paper = of_method["paper_mean"].to_numpy(dtype=float)
            ax.hlines(paper, x - width / 2, x + width / 2, colors="black", linewidth=2.5)
        ax.set_xticks(range(len(keys)), [titles[key] for key in keys])
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.set_title(f"{name}, {regularizer_label(block)}: the reported variant of each method", fontsize=10)
        low = np.nanmin(np.concatenate([rows["mean"] - rows["std"].fillna(0), rows["paper_mean"].astype(float)]))
        high = np.nanmax(np.concatenate([rows["mean"] + rows["std"].fillna(0), rows["paper_mean"].astype(float)]))
        ax.set_ylim(max(0.0, np.floor(low - 0.1 * (high - low) - 1)), min(100.0, np.ceil(high + 0.1 * (high - low) + 1)))
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=colors[label], linewidth=8, label=label) for label in methods]
    handles.append(Line2D([], [], color="black", linewidth=2.5, label="paper (where it reports the cell)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5),
                  title="mean ± 1 std over seeds (y axis does not start at 0)")
    _save(figure, stem)
    return bars[[*ROW_KEYS, "method", "variant", "n", "mean", "std", "paper_mean"]].reset_index(drop=True)


def _line_with_band(ax, line: pd.DataFrame, color, label: str) -> None:
    ax.plot(line["epoch"], line["mean"], color=color, label=label, linewidth=1.6, marker="o", markersize=2.5)
    std = line["std"].fillna(0)
    ax.fill_between(line["epoch"], line["mean"] - std, line["mean"] + std, color=color, alpha=0.18, linewidth=0)


def _save(figure: Figure, stem: Path) -> None:
    for fmt in FORMATS:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=DPI)
        write_atomic(Path(f"{stem}.{fmt}"), buffer.getvalue())
