"""GPU compile of the generated kernels on a machine without a GPU (Triton + ptxas, sm_90 target)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_generated_kernels_compile_for_sm90():
    # A subprocess: compiled (not interpreted) Triton needs TRITON_INTERPRET unset at import time.
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--quick"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("OK ") == 3
