"""The wheel is the app: it carries the configs, and `rifle-bench` runs from any directory once installed."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)
    assert completed.returncode == 0, f"{args}:\n{completed.stdout}\n{completed.stderr}"
    return completed


def test_the_wheel_carries_the_configs_and_runs_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", wheels, ROOT,
        cwd=tmp_path)
    (wheel,) = wheels.glob("rifle_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("rifle_bench/conf/config.yaml", "rifle_bench/conf/method/rifle.yaml",
                   "rifle_bench/conf/experiment/table1.yaml", "rifle_bench/conf/hydra/launcher/slurm.yaml",
                   "rifle_bench/paper/paper_table1.csv", "hydra_plugins/rifle_bench_sweeper/rifle_sweeper.py"):
        assert config in names, f"{config} is not in {wheel.name}"

    # A fresh environment that reuses the installed dependencies (a path entry, not this checkout's editable
    # install), with the wheel installed into it, not -e.
    env_dir = tmp_path / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=tmp_path)
    python = env_dir / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel,
        cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    location = run(python, "-c", "import rifle_bench; print(rifle_bench.__file__)", cwd=elsewhere).stdout
    assert location.startswith(str(site)), location
    composed = run(env_dir / "bin" / "rifle-bench", "--cfg", "job", "method=rifle", "trainer=paper",
                   cwd=elsewhere).stdout
    assert "name: rifle" in composed and "epochs: 40" in composed and "precision: fp32" in composed
    assert "tf32: false" in composed
    assert list(elsewhere.iterdir()) == []
