#!/usr/bin/env bash
# One-shot GPU check for the SFMP Triton kernels (H100/H200), about 9 minutes. From the repo root:
#     OUT=/some/dir bash benchmarks/device_check.sh            # on the GPU machine
#     DRY_RUN=1 OUT=/tmp/dry bash benchmarks/device_check.sh   # here, on a CPU: every CPU-runnable part
# Ship the peers' wheels with it: `python benchmarks/peer_wheels.py` here fills .whl/peers/ (git-ignored;
# the run tool's carry: [".whl/peers"]); they are installed with pip --no-index --no-deps into
# $OUT/_peers and put on PYTHONPATH, leaving the device's own torch/triton alone.
# 1. environment report (python, torch, triton, GPU, peers) -- stops with a clear message if torch or
#    triton is missing (the bare device machine may not have them; it has no internet);
# 2. GPU correctness first: pytest tests/codegen tests/ops -m "not slow" with compiled (not
#    interpreted) kernels, every family, the fp16 tensor-core bound of tests/codegen/test_prefill_m16.py
#    included, the kernel tests first (140 s);
# 3. the L2-cold kernel table with peers: benchmarks/kernels.py on 4096x14336 and 14336x4096, 3.0 BPW,
#    M in {1, 16, 2048}, time-boxed autotuning of the goal shape (m1: gemv and gemvu together; m16:
#    prefill's tensor-core body and decode's together), SFMP beside fp16, dequant+matmul,
#    dequant+cuBLAS (M >= 512), torchao int4 and gemlite 4-bit (150 s); it first checks its kernels
#    against the reference op on 1024x4096 (M = 1, 16, 128) and exits non-zero on a mismatch;
#    then the A/B row of the fp16x2 body: --gemv-family gemvh at M = 1 on the goal layer (60 s; its
#    instruction counts are a projection in RESULTS.md until this runs; GEMVH_AB=0 skips it);
#    AB=1 adds the old A/B run: --gemv-family gemvu at M = 1 (100 s);
# 4. the end-to-end Llama-3-8B-shaped decoder: benchmarks/decoder_e2e.py, dense vs SFMP 3.0 vs
#    peers, decode tok/s at batch 1 and 16 over a 512-token cache, a 2048-token prefill (210 s).
# STAGES="tests kernels decoder" (default: all three) picks the stages, e.g. for a rerun.
# Everything lands under $OUT: env.txt, pytest.txt, junit.xml, kernels.txt/json, decoder.txt/json,
# autotune/*.json (tuned configs: copy a GPU section into sfmp_compile/codegen/default_configs.json)
# and kernels/*.py (the generated kernel sources).
set -u
OUT="${OUT:-$(pwd)/device_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
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

# Peers from the wheels carried beside the repository (the device machine reaches no registry).
if ls .whl/peers/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --target "$OUT/_peers" .whl/peers/*.whl \
      >"$OUT/peers_install.txt" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$OUT/_peers"
    echo "peers: installed $(cd .whl/peers && ls *.whl | tr '\n' ' ')into $OUT/_peers" | tee -a "$OUT/env.txt"
  else
    echo "peers: pip could not install the carried wheels (see peers_install.txt)" | tee -a "$OUT/env.txt"
  fi
else
  echo "peers: no wheels in .whl/peers (run python benchmarks/peer_wheels.py here, carry .whl/peers)" \
      | tee -a "$OUT/env.txt"
fi

if [ "${DRY_RUN:-0}" = "1" ]; then
  # CPU dry run: every part that needs no GPU, so a GPU session spends nothing on a broken script.
  rc=0
  echo "== dry run: the scripts parse and start"
  "$PY" -m py_compile benchmarks/kernels.py benchmarks/decoder_e2e.py benchmarks/peers.py \
      benchmarks/synthetic.py benchmarks/compile_check.py || rc=1
  "$PY" benchmarks/kernels.py --help >/dev/null || rc=1
  "$PY" benchmarks/kernels.py --gemv-family gemvh --help >/dev/null || rc=1  # the A/B row's flag parses
  echo "== dry run: peer versions from $OUT/_peers (gemlite reads the GPU at import, so it fails here)"
  "$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); import peers; print(peers.versions())' 2>&1 | tail -1
  echo "== dry run: decoder_e2e.py --tiny (CPU)"
  timeout 300 "$PY" benchmarks/decoder_e2e.py --tiny --json "$OUT/decoder_tiny.json" 2>&1 \
      | tee "$OUT/decoder.txt" | tail -9
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
  echo "== dry run: compile_check.py --quick and --m16 (sm_90 SASS without a GPU)"
  timeout 300 "$PY" benchmarks/compile_check.py --quick 2>&1 | tail -4
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
  timeout 300 "$PY" benchmarks/compile_check.py --m16 2>&1 | tail -6
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
  timeout 300 "$PY" benchmarks/compile_check.py --family gemvh 2>&1 | tail -2  # its inline PTX assembles
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
  echo "== dry run done: rc=$rc"
  exit $rc
fi

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

STAGES="${STAGES:-tests kernels decoder}"
has() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# 2. GPU correctness first (a failing kernel makes the timings meaningless; the benchmarks still
#    run, so one device session yields both).
rc_tests=0
if has tests; then
  if "$PY" -c 'import pytest, hypothesis' >/dev/null 2>&1; then
    # The kernels' tests first (pytest keeps the order of the files named), so a time-out cuts the
    # least important; the CPU dry run of the benchmarks (test_gpu_benchmarks.py) is not run here.
    echo "== pytest tests/codegen tests/ops -m 'not slow' (compiled kernels)"
    timeout 140 "$PY" -m pytest tests/codegen/test_kernels.py tests/codegen/test_prefill_m16.py \
        tests/codegen/test_dequant.py tests/codegen/test_gemvu.py tests/codegen/test_gemvh.py \
        tests/codegen/test_codegen.py tests/ops \
        -m "not slow" -q --maxfail=5 --durations=15 \
        --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/pytest.txt" | tail -40
    rc_tests=${PIPESTATUS[0]}
    echo "pytest exit code: $rc_tests" | tee -a "$OUT/pytest.txt"
  else
    echo "MISSING: pytest/hypothesis -- skipping the correctness tests" | tee "$OUT/pytest.txt"
    rc_tests=6
  fi
fi

# 3. The L2-cold kernel table with peers (one cache dir, $OUT: its tuned table is the one to ship).
rc_bench=0
if has kernels; then
  echo "== benchmarks/kernels.py (L2-cold, peers, tune budget 40 s)"
  timeout 150 "$PY" benchmarks/kernels.py --device cuda --tune --tune-budget 40 \
      --shapes 4096x14336,14336x4096 --bpws 3.0 --ms 1,16,2048 \
      --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.txt"
  rc_bench=${PIPESTATUS[0]}
  echo "benchmark exit code: $rc_bench" | tee -a "$OUT/kernels.txt"
  if [ "${GEMVH_AB:-1}" = "1" ]; then  # the fp16x2 body (gemvh: inline PTX, tested above) alone at M = 1
    timeout 60 "$PY" benchmarks/kernels.py --device cuda --gemv-family gemvh --tune --tune-budget 20 \
        --shapes 4096x14336 --bpws 3.0 --ms 1 --no-peers --json "$OUT/kernels_gemvh.json" 2>&1 \
        | tee "$OUT/kernels_gemvh.txt"
  fi
  if [ "${AB:-0}" = "1" ]; then  # the gemvu body alone at M = 1, against the default run's M = 1 rows
    timeout 100 "$PY" benchmarks/kernels.py --device cuda --gemv-family gemvu --tune --tune-budget 30 \
        --shapes 4096x14336 --bpws 3.0 --ms 1 --no-peers --json "$OUT/kernels_gemvu.json" 2>&1 \
        | tee "$OUT/kernels_gemvu.txt"
  fi
fi

# 4. The end-to-end decoder (it reads the tuned table the kernel run just wrote).
rc_dec=0
if has decoder; then
  echo "== benchmarks/decoder_e2e.py (Llama-3-8B-shaped, bf16, SFMP 3.0 BPW, peers)"
  timeout 210 "$PY" benchmarks/decoder_e2e.py --json "$OUT/decoder.json" 2>&1 | tee "$OUT/decoder.txt"
  rc_dec=${PIPESTATUS[0]}
  echo "decoder exit code: $rc_dec" | tee -a "$OUT/decoder.txt"
fi

echo "== done: tests rc=$rc_tests kernels rc=$rc_bench decoder rc=$rc_dec; outputs in $OUT"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ] && [ "$rc_dec" -eq 0 ]
