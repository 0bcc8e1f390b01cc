#!/usr/bin/env python
"""Sweep overhead: a 6-cell sweep of the embedded data, its wall time against the sum of its cells' training time.

Everything that is not training counts as overhead: interpreter and library start-up, Hydra's composition,
data preparation, model building, evaluation, writing results and the report. Goal: under 10%.
Last line: sweep_overhead=<fraction>
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per cell (default: the default run's, trainer.epochs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as sweep_dir:
        command = [sys.executable, "-m", "rifle_bench.cli", "-m", "method=original,rifle", "method.k=choice(3)",
                   "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}"]
        if args.epochs:
            command.append(f"trainer.epochs={args.epochs}")
        clock = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - clock
        results = [json.loads(p.read_text()) for p in Path(sweep_dir).glob("*/result.json")]
    train = sum(r["train_s"] for r in results)
    evaluation = sum(r["eval_s"] for r in results)
    print(f"cells {len(results)}, epochs {results[0]['epochs']}: sweep wall {wall:.1f} s, training {train:.1f} s, "
          f"evaluation {evaluation:.1f} s, everything else {wall - train - evaluation:.1f} s")
    print(f"sweep_overhead={(wall - train) / train:.4f}")


if __name__ == "__main__":
    main()
