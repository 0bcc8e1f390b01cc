"""experiment=fig1 and fig2: the cells they plan (one variant per method, from hydra.sweeper.grids) and settings."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli


@pytest.mark.parametrize(("preset", "expected"), [
    ("fig1", {"original", "cyclic_lr(n_cycles=4)", "rifle_a(k=3)"}),
    ("fig2", {"original", "rifle_a(k=4)"}),
])
def test_figure_presets_plan_one_variant_per_method_over_three_seeds(tmp_path, preset, expected):
    completed = run_cli("-m", f"experiment={preset}", "hydra.sweeper.dry_run=true", cwd=tmp_path)
    cells = re.findall(r"animals/mobilenet_v2/l2/(\S+)/seed=(\d)", completed.stdout)
    assert {method for method, _ in cells} == expected
    assert sorted(cells) == sorted((method, str(seed)) for method in expected for seed in range(3))
    assert f"outputs/sweeps/{preset}" in completed.stdout


def test_figure_presets_evaluate_every_epoch_and_fig2_records_gradient_norms(compose_cfg):
    fig1, fig2 = compose_cfg("experiment=fig1"), compose_cfg("experiment=fig2")
    assert (fig1.trainer.eval_every, fig1.trainer.grad_norms, fig1.trainer.epochs % 4) == (1, False, 0)
    assert (fig2.trainer.eval_every, fig2.trainer.grad_norms, fig2.trainer.epochs % 5) == (1, True, 0)
    assert fig1.hydra.sweeper.grids == {"cyclic_lr": {"n_cycles": [4]}, "rifle_a": {"k": [3]}}
