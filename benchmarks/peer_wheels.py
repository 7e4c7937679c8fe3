"""Fetch the GPU peers' wheels into a cache beside the repository, for a GPU machine with no registry.

    python benchmarks/peer_wheels.py            # -> .whl/peers/*.whl (git-ignored), about 4 MB
    python benchmarks/peer_wheels.py --check    # list what is there, download nothing

Run it HERE (a machine that reaches the package registry), never in ``make test``. Then ship the
folder with the device run (the ``run`` tool's ``carry: [".whl/peers"]``); benchmarks/device_check.sh
installs whatever is in it with ``pip install --no-index --no-deps --target $OUT/_peers`` and puts
that on PYTHONPATH, so the device's own torch/triton are left alone.

Pins: torchao 0.18.0 (an abi3 wheel; its Python int4 path calls torch's own tinygemm op, so it can
run against another torch than it was built for, with its C++ extensions disabled) and gemlite
0.6.0.post2 (pure Python over Triton, published as an sdist only: built into a wheel here with
``pip wheel --no-deps``). Neither pulls dependencies the device lacks (gemlite needs numpy, tqdm,
triton; torchao none at run time).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".whl" / "peers"
PINS = ("torchao==0.18.0", "gemlite==0.6.0.post2")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def fetch(cache: Path = CACHE) -> list[Path]:
    """Download (or build, for sdist-only pins) one wheel per pin into ``cache``; returns the wheels."""
    cache.mkdir(parents=True, exist_ok=True)
    for pin in PINS:
        name = pin.split("==")[0]
        if any(cache.glob(f"{name}-{pin.split('==')[1]}-*.whl")):
            continue
        # --no-deps: the device keeps its own torch/triton (pip wheel builds an sdist-only pin here)
        _pip("wheel", "--no-deps", pin, "-w", str(cache))
    return sorted(cache.glob("*.whl"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only list the cached wheels")
    ap.add_argument("--dir", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    wheels = sorted(args.dir.glob("*.whl")) if args.check else fetch(args.dir)
    for w in wheels:
        print(f"{w.stat().st_size / 1e6:6.1f} MB  {w}")
    missing = [p for p in PINS if not any(args.dir.glob(f"{p.split('==')[0]}-{p.split('==')[1]}-*.whl"))]
    if missing:
        print("missing:", ", ".join(missing))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
