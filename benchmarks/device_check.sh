#!/usr/bin/env bash
# One-shot GPU check for the SFMP Triton kernels (H100/H200). Run from the repository root:
#     OUT=/some/dir bash benchmarks/device_check.sh
# 1. environment report (python, torch, triton, GPU) -- stops with a clear message if torch or
#    triton is missing (the bare device machine may not have them; it has no internet);
# 2. GPU correctness first: pytest tests/codegen tests/ops -m "not slow" with compiled (not
#    interpreted) kernels, every family (test_gemvu.py compiles a few gemvu kernels) (180 s);
# 3. benchmarks/kernels.py on 4096x14336 and 4096x4096, 3.0 BPW, time-boxed autotuning (AB=0: the
#    full GPU table instead): first the default families at M in {1, 16, 2048} -- at M = 1 the
#    tuner compares gemv's and gemvu's configs together (autotune.candidate_configs("gemv", ...)),
#    decode and prefill above -- then the A/B: --gemv-family gemvu at M = 1 (gemvu's own space
#    tuned, its FALLBACK first). Each run first checks its kernels against the reference op on
#    1024x4096 (M = 1, 16, 128) and exits non-zero on a mismatch.
# Everything lands under $OUT: env.txt, pytest.txt, junit.xml, kernels_{default,gemvu}.txt/json (or
# kernels.*), autotune/*.json (tuned configs of the default run: copy a GPU section into
# sfmp_compile/codegen/default_configs.json; the forced gemvu run saves none) and kernels/*.py (the
# generated kernel sources). Budget: about 8 minutes in total.
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

# 2. GPU correctness first (a failing kernel makes the timings meaningless; the benchmarks still
#    run, so one device session yields both).
rc_tests=0
if "$PY" -c 'import pytest, hypothesis' >/dev/null 2>&1; then
  echo "== pytest tests/codegen tests/ops -m 'not slow' (compiled kernels)"
  timeout 180 "$PY" -m pytest tests/codegen tests/ops -m "not slow" -q --maxfail=5 --durations=15 \
      --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/pytest.txt" | tail -40
  rc_tests=${PIPESTATUS[0]}
  echo "pytest exit code: $rc_tests" | tee -a "$OUT/pytest.txt"
else
  echo "MISSING: pytest/hypothesis -- skipping the correctness tests" | tee "$OUT/pytest.txt"
  rc_tests=6
fi

# 3. Timings. RUNS: "default" (families as the tables and the tuner choose: gemv tuned together
#    with gemvu at M = 1, decode at 16, prefill at 2048) and "gemvu" (--gemv-family gemvu at M = 1,
#    the A/B against the default run's M = 1 rows). One cache dir ($OUT): the default run's tuned
#    table is the one to ship; the gemvu run keeps its tuned config in memory.
rc_bench=0
if [ "${AB:-1}" = "1" ]; then
  for RUN in ${RUNS:-default gemvu}; do
    case "$RUN" in  # time limits keep the whole script under ~8 minutes
      default) budget=45; ms=1,16,2048; flags=(); limit=130 ;;
      gemvu)   budget=35; ms=1; flags=(--gemv-family gemvu); limit=120 ;;  # a new gemvu constexpr set compiles in ~15 s
      *) echo "unknown run $RUN (expected default or gemvu)"; rc_bench=2; continue ;;
    esac
    echo "== benchmarks/kernels.py $RUN (M $ms, tune budget ${budget}s)"
    timeout "$limit" "$PY" benchmarks/kernels.py --device cuda ${flags[@]+"${flags[@]}"} \
        --tune --tune-budget "$budget" --shapes 4096x14336,4096x4096 --bpws 3.0 --ms "$ms" \
        --json "$OUT/kernels_$RUN.json" 2>&1 | tee "$OUT/kernels_$RUN.txt"
    rc=${PIPESTATUS[0]}
    echo "benchmark $RUN exit code: $rc" | tee -a "$OUT/kernels_$RUN.txt"
    [ "$rc" -ne 0 ] && rc_bench=$rc
  done
  echo "== A/B summary (us per call, by shape and M; first column: the run's --gemv-family, auto = default)"
  grep -hE "^(auto|gemv|gemvu) +[0-9]+x" "$OUT"/kernels_*.txt | sort -k2,2 -k4,4 -k1,1 || true
else
  echo "== benchmarks/kernels.py (GPU table)"
  timeout 200 "$PY" benchmarks/kernels.py --device cuda --tune --tune-budget 45 \
      --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.txt"
  rc_bench=${PIPESTATUS[0]}
  echo "benchmark exit code: $rc_bench" | tee -a "$OUT/kernels.txt"
fi

echo "== done: tests rc=$rc_tests bench rc=$rc_bench; outputs in $OUT"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ]
