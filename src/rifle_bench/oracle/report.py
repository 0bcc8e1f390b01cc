"""The oracle study's table and figure, read from the result.json files of a sweep directory.

Writes oracle_table.md, oracle_table.csv, oracle_table.tex, oracle.png and oracle.pdf beside the runs.
Runs that failed or have not finished are left out and counted. Runs that differ in more than their seed
(e.g. `-m seed=0,1 finetune.k=2,4`) form separate settings: rows of their own, a figure row each.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rifle_bench.oracle.experiment import PAPER
from rifle_bench.results import RESULT_FILE, is_complete, write_atomic

LABELS = {"l2": "L2", "rifle": "L2 + RIFLE", "rifle_a": "L2 + RIFLE-A", "rifle_b": "L2 + RIFLE-B",
          "init": "W1' at random init", "teacher": "W1' after pre-training"}
TICKS = {"rifle": "L2 +\nRIFLE", "rifle_a": "L2 +\nRIFLE-A", "rifle_b": "L2 +\nRIFLE-B",
         "init": "W1' at\nrandom init", "teacher": "W1' after\npre-training"}
REFERENCES = ("init", "teacher")  # OT of the teacher's first layer, for scale: no fine-tuning, no test MSE
FILES = ("oracle_table.md", "oracle_table.csv", "oracle_table.tex", "oracle.png", "oracle.pdf")


@dataclass
class Report:
    runs: pd.DataFrame     # one row per run and method: setting, seed, method, test_mse, ot, ot_cost, run_dir
    summary: pd.DataFrame  # one row per setting and method: n, means, stds, paper values, paired wins
    plotted: dict          # the figure's bar heights: {(setting, "test_mse" or "ot"): {method: mean}}
    skipped: list[str]     # run directories left out (failed or unfinished)


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    rows, skipped = [], []
    for path in sorted(Path(sweep_dir).rglob(RESULT_FILE)):
        if not is_complete(path.parent):
            skipped.append(str(path.parent))
            continue
        result = json.loads(path.read_text())
        common = {"setting": result["setting"], "seed": result["seed"], "ot_cost": result["ot_cost"],
                  "run_dir": str(path.parent)}
        for method, values in result["methods"].items():
            rows.append({**common, "method": method, "test_mse": values["test_mse"], "ot": values["ot"]})
        for reference in REFERENCES:
            rows.append({**common, "method": reference, "test_mse": float("nan"),
                         "ot": result["references"][f"ot_{reference}"]})
    columns = ["setting", "seed", "method", "test_mse", "ot", "ot_cost", "run_dir"]
    return pd.DataFrame(rows, columns=columns), skipped


def _below_l2(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Per (setting, method): in how many seeds the method's value is below L2's of the same seed."""
    wide = runs.pivot_table(index=["setting", "seed"], columns="method", values=metric)
    if "l2" not in wide:
        return pd.Series(dtype=object)
    counts = {}
    for method in wide.columns.drop("l2"):
        paired = wide[[method, "l2"]].dropna()
        below = (paired[method] < paired["l2"]).groupby(level="setting").sum()
        total = paired.groupby(level="setting").size()
        counts.update({(setting, method): f"{below[setting]}/{total[setting]}" for setting in total.index})
    return pd.Series(counts, dtype=object)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    order = {method: i for i, method in enumerate(LABELS)}
    summary = (runs.groupby(["setting", "method"], sort=False)
               .agg(n=("seed", "nunique"), test_mse_mean=("test_mse", "mean"), test_mse_std=("test_mse", "std"),
                    ot_mean=("ot", "mean"), ot_std=("ot", "std"))
               .reset_index())
    summary["paper_test_mse"] = summary["method"].map(lambda m: PAPER.get(m, {}).get("test_mse"))
    summary["paper_ot"] = summary["method"].map(lambda m: PAPER.get(m, {}).get("ot"))
    for metric in ("test_mse", "ot"):
        below = _below_l2(runs[~runs["method"].isin(REFERENCES)], metric)
        summary[f"{metric}_below_l2"] = [below.get((s, m), "") for s, m in zip(summary["setting"], summary["method"])]
    summary["rank"] = summary["method"].map(order)
    return summary.sort_values(["setting", "rank"]).drop(columns="rank").reset_index(drop=True)


def _cell(mean: float, std: float, fmt: str) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:{fmt}} ± {std:{fmt}}" if not pd.isna(std) else f"{mean:{fmt}}"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells, shared by the Markdown and LaTeX outputs."""
    table = pd.DataFrame({
        "setting": summary["setting"].replace("", "default"),
        "method": summary["method"].map(LABELS),
        "seeds": summary["n"],
        "test MSE": [_cell(m, s, ".2e") for m, s in zip(summary["test_mse_mean"], summary["test_mse_std"])],
        "paper MSE": summary["paper_test_mse"].map(lambda v: "" if pd.isna(v) else f"{v:.2e}"),
        "OT(W1, oracle W1)": [_cell(m, s, ".4f") for m, s in zip(summary["ot_mean"], summary["ot_std"])],
        "paper OT": summary["paper_ot"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}"),
        "MSE < L2": summary["test_mse_below_l2"],
        "OT < L2": summary["ot_below_l2"],
    })
    return table if table["setting"].nunique() > 1 else table.drop(columns="setting")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def latex(table: pd.DataFrame) -> str:
    def tex(text):
        if not isinstance(text, str):
            return text
        return text.replace("_", r"\_").replace("±", r"$\pm$").replace("<", "$<$")

    return table.map(tex).rename(columns=tex).style.hide(axis="index").to_latex(hrules=True)


def _distinct(settings: list[str]) -> dict[str, str]:
    """Each setting shown by the overrides that tell it apart from the others (all of them when alone)."""
    items = {setting: setting.split(",") if setting else [] for setting in settings}
    common = set.intersection(*(set(i) for i in items.values())) if len(settings) > 1 else set()
    return {setting: ",".join(i for i in items[setting] if i not in common) for setting in settings}


def figure(summary: pd.DataFrame, runs: pd.DataFrame, png: Path, pdf: Path) -> dict:
    """Bars of mean test MSE and mean OT per method (error bars: one std over seeds, dots: single seeds), the
    paper's values as black diamonds; one row of panels per setting.

    Returns the plotted bar heights, {(setting, "test_mse" or "ot"): {method: mean}}.
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(summary["setting"]))
    titles = _distinct(settings)
    methods = summary.loc[~summary["method"].isin(REFERENCES)].groupby("setting")["method"].count().max()
    mse_bars, ot_bars = methods, methods + len(REFERENCES)
    fig, axes = plt.subplots(len(settings), 2, figsize=(max(9.0, 0.9 * (mse_bars + ot_bars) + 3),
                                                        3.4 * len(settings) + 0.6),
                             squeeze=False, width_ratios=[mse_bars + 1, ot_bars + 1])
    mse_scale = 10.0 ** math.floor(math.log10(summary["test_mse_mean"].max()))
    plotted = {}
    for row, setting in enumerate(settings):
        rows = summary[summary["setting"] == setting]
        seeds = runs[runs["setting"] == setting]
        costs = ", ".join(sorted(seeds["ot_cost"].unique()))
        panels = (("test_mse", rf"test MSE on h2, clean labels ($\times 10^{{{math.log10(mse_scale):.0f}}}$)",
                   "paper_test_mse", mse_scale),
                  ("ot", f"OT to the oracle's W1 ({costs})", "paper_ot", 1.0))
        for col, (metric, ylabel, paper, scale) in enumerate(panels):
            ax = axes[row][col]
            shown = rows[rows[f"{metric}_mean"].notna()].reset_index(drop=True)
            colors = ["0.75" if m in REFERENCES else f"C{i}" for i, m in enumerate(shown["method"])]
            ax.bar(shown.index, shown[f"{metric}_mean"] / scale, yerr=shown[f"{metric}_std"].fillna(0) / scale,
                   color=colors, capsize=4, label="mean ± std over seeds")
            for i, method in enumerate(shown["method"]):
                values = seeds.loc[seeds["method"] == method, metric] / scale
                ax.scatter([i] * len(values), values, s=10, color="0.2", zorder=3,
                           label="single seeds" if i == 0 else None)
            with_paper = shown[shown[paper].notna()]
            ax.scatter(with_paper.index, with_paper[paper] / scale, marker="D", s=40, color="black", zorder=4,
                       label="paper (Sec. 4.6.2)")
            value = "{:.2e}" if metric == "test_mse" else "{:.4f}"
            ax.set_xticks(shown.index, [f"{TICKS.get(m, LABELS[m])}\n{value.format(mean)}"
                                        for m, mean in zip(shown["method"], shown[f"{metric}_mean"])], fontsize=8)
            ax.set_ylabel(ylabel, fontsize=9)
            title = f"{'test MSE' if metric == 'test_mse' else 'OT(W1, oracle W1)'}, {int(shown['n'].max())} seeds"
            ax.set_title(title + (f"\n{titles[setting]}" if titles[setting] else ""), fontsize=10)
            plotted[(setting, metric)] = dict(zip(shown["method"], shown[f"{metric}_mean"]))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(settings), 1, 1))
    for path in (png, pdf):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], dpi=110)
        write_atomic(path, buffer.getvalue())
    plt.close(fig)
    return plotted


def write_report(sweep_dir: Path) -> Report | None:
    """Write the table and figure files into `sweep_dir`; None (and nothing written) when no run has finished."""
    sweep_dir = Path(sweep_dir)
    runs, skipped = collect(sweep_dir)
    if runs.empty:
        print(f"rifle-bench-oracle: no finished run under {sweep_dir}", file=sys.stderr)
        return None
    summary = summarize(runs)
    table = display_table(summary)
    md, csv, tex, png, pdf = (sweep_dir / name for name in FILES)
    note = f"\n{len(skipped)} unfinished or failed run(s) left out: {', '.join(skipped)}\n" if skipped else ""
    write_atomic(md, markdown(table) + note)
    write_atomic(csv, summary.to_csv(index=False))
    write_atomic(tex, latex(table))
    plotted = figure(summary, runs, png, pdf)
    print(markdown(table) + note + f"\nwritten: {', '.join(str(p) for p in (md, csv, tex, png, pdf))}", flush=True)
    return Report(runs=runs, summary=summary, plotted=plotted, skipped=skipped)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rifle-bench-oracle-report",
                                     description="Table and figure of a rifle-bench-oracle sweep directory.")
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"sweep_dir={args.sweep_dir}: not a directory; expected a rifle-bench-oracle sweep directory; "
                     f"pass the directory printed by `rifle-bench-oracle -m ...`")
    if write_report(args.sweep_dir) is None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
