#!/usr/bin/env bash
# One-shot GPU check for the SFMP Triton kernels (H100/H200). Run from the repository root:
#     OUT=/some/dir bash benchmarks/device_check.sh
# 1. environment report (python, torch, triton, GPU) -- stops with a clear message if torch or
#    triton is missing (the bare device machine may not have them; it has no internet);
# 2. benchmarks/kernels.py: A/B of kernel variants 4, 3, 2 (VARIANTS="4 3 2 1" adds 1) on
#    4096x14336 and 4096x4096, 3.0 BPW (AB=0: the old full GPU table), time-boxed autotuning; each
#    run first checks its kernels against the reference op on 1024x4096 (M = 1, 16, 128) and exits
#    non-zero on a mismatch;
# 3. GPU correctness: pytest tests/codegen -m "not slow" with compiled (not interpreted) kernels
#    (default variant 3; test_gemv_v4.py compiles a few variant-4 gemvs), after the timings so a
#    slow compile cannot eat the benchmark's time (150 s).
# Everything lands under $OUT: env.txt, pytest.txt, junit.xml, kernels_v*.txt/json (or kernels.*),
# autotune/*.json (tuned configs: copy a GPU section into sfmp_compile/codegen/default_configs.json)
# and kernels/*.py (the generated kernel sources). Budget: about 8 minutes in total (9.5 with v1).
set -u
OUT="${OUT:-$(pwd)/device_out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0            # tests default it to 1 with setdefault; 0 keeps real kernels
export SFMP_CACHE_DIR="$OUT"         # generated kernels + autotune JSON come back with $OUT
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-sfmp}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3 python3.12 python3.11 python3.10 python; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
if [ -z "$PY" ]; then echo "NO PYTHON FOUND on this machine" | tee "$OUT/env.txt"; exit 2; fi

{
  echo "== $(date -u)  host $(hostname)"
  echo "python: $(command -v "$PY") $($PY --version 2>&1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
} | tee "$OUT/env.txt"

if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  echo "MISSING: torch is not importable with $PY -- cannot run the GPU checks." | tee -a "$OUT/env.txt"
  echo "Install the pinned CUDA build first: pip install torch==2.13.0 triton==3.7.1 pytest hypothesis" | tee -a "$OUT/env.txt"
  exit 3
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for m in ("triton", "pytest", "hypothesis"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except ImportError:
        print("MISSING:", m)
EOF
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "MISSING: torch sees no CUDA device (CPU-only torch build?)" | tee -a "$OUT/env.txt"; exit 4
fi
if ! "$PY" -c 'import triton' >/dev/null 2>&1; then
  echo "MISSING: triton is not importable; the kernels cannot run" | tee -a "$OUT/env.txt"; exit 5
fi

# sfmp_compile/__init__ imports safetensors (checkpoints); the kernels do not need it. On a bare
# machine without it, put a stub on the path so the kernel tests and benchmark can still import.
if ! "$PY" -c 'import safetensors' >/dev/null 2>&1; then
  mkdir -p "$OUT/_stubs/safetensors"
  cat > "$OUT/_stubs/safetensors/__init__.py" <<'PYEOF'
"""Stub written by benchmarks/device_check.sh: safetensors is missing on this machine."""
class SafetensorError(Exception):
    pass
def safe_open(*a, **k):
    raise RuntimeError("safetensors is not installed (stub from device_check.sh)")
PYEOF
  cat > "$OUT/_stubs/safetensors/torch.py" <<'PYEOF'
def load_file(*a, **k):
    raise RuntimeError("safetensors is not installed (stub from device_check.sh)")
save_file = load_file
PYEOF
  export PYTHONPATH="$PYTHONPATH:$OUT/_stubs"
  echo "STUBBED: safetensors missing; a stub lets sfmp_compile import (checkpoint tests would fail)" | tee -a "$OUT/env.txt"
fi

# 2. A/B of the kernel generations (codegen/templates.variant) on 4096x14336 and 4096x4096, 3.0 BPW:
#    variant 4 (opt-in: gemv with U-group [U, words, rows] loads, 128-bit loads, register double
#    buffer, split-K partials without atomics) at M = 1 only (decode/prefill are variant 3's), its
#    config space tuned first (shipped default 'gemv|m1|v4' tried first); variant 3 (default:
#    walk-ordered offsets + prefetch, double-buffered gemv) at M in {1, 16, 2048}; variant 2 (gemv
#    not double-buffered) at M = 1 only; variant 1 (as measured 2026-11-27) only when VARIANTS
#    names it (it was timed twice already). Separate cache dirs so tuned configs do not mix.
#    AB=0 runs the old full table instead.
rc_bench=0
if [ "${AB:-1}" = "1" ]; then
  for V in ${VARIANTS:-4 3 2}; do
    case "$V" in  # time limits keep the whole script under ~8 minutes (~9.5 with variant 1)
      4) budget=35; ms=1; limit=120 ;;  # each new v4 constexpr combination compiles in ~15 s
      3) budget=40; ms=1,16,2048; limit=110 ;;
      2) budget=15; ms=1; limit=70 ;;
      *) budget=10; ms=1,16,2048; limit=80 ;;
    esac
    echo "== benchmarks/kernels.py variant $V (M $ms, tune budget ${budget}s)"
    SFMP_CACHE_DIR="$OUT/v$V" timeout "$limit" "$PY" benchmarks/kernels.py --device cuda --variant "$V" \
        --tune --tune-budget "$budget" --shapes 4096x14336,4096x4096 --bpws 3.0 --ms "$ms" \
        --json "$OUT/kernels_v$V.json" 2>&1 | tee "$OUT/kernels_v$V.txt"
    rc=${PIPESTATUS[0]}
    echo "benchmark variant $V exit code: $rc" | tee -a "$OUT/kernels_v$V.txt"
    [ "$rc" -ne 0 ] && rc_bench=$rc
  done
  echo "== A/B summary (us per call, by shape and M; variants ${VARIANTS:-4 3 2})"
  grep -h "^v[0-9] " "$OUT"/kernels_v*.txt | sort -k2,2 -k4,4 -k1,1 || true
else
  echo "== benchmarks/kernels.py (GPU table)"
  timeout 200 "$PY" benchmarks/kernels.py --device cuda --tune --tune-budget 45 \
      --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.txt"
  rc_bench=${PIPESTATUS[0]}
  echo "benchmark exit code: $rc_bench" | tee -a "$OUT/kernels.txt"
fi
rc_tests=0
if "$PY" -c 'import pytest, hypothesis' >/dev/null 2>&1; then
  echo "== pytest tests/codegen -m 'not slow' (compiled kernels)"
  timeout 150 "$PY" -m pytest tests/codegen -m "not slow" -q --maxfail=5 --durations=15 \
      --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/pytest.txt" | tail -40
  rc_tests=${PIPESTATUS[0]}
  echo "pytest exit code: $rc_tests" | tee -a "$OUT/pytest.txt"
else
  echo "MISSING: pytest/hypothesis -- skipping the correctness tests" | tee "$OUT/pytest.txt"
  rc_tests=6
fi

echo "== done: tests rc=$rc_tests bench rc=$rc_bench; outputs in $OUT"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ]
