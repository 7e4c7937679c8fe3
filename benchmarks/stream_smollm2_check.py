"""SmolLM2: in-memory quantize + save_quantized vs stream_quantize of its cached fp32 directory,
tensor for tensor. ``python benchmarks/stream_smollm2_check.py rtn[,gptq] [activation|fisher]`` prints
one line per quantizer (slow on 2 cores: ~40-50 min per quantizer under load; Fisher with RTN ~1 min
quiet)."""
import json
import sys
import time

import torch
from pathlib import Path
from safetensors.torch import load_file
from sfmp_compile import quantize, save_quantized
from sfmp_compile.eval.models import load_model
from sfmp_compile.eval.text import calibration_batches
from sfmp_compile.stream import stream_quantize
src = str(Path.home() / ".cache/sfmp_compile/smollm2-135m-instruct-fp32")
salience = sys.argv[2] if len(sys.argv) > 2 else "activation"
for q in sys.argv[1].split(","):
    model, tok = load_model("smollm2")
    cal = calibration_batches(tok, 4, 128)
    t0 = time.time(); quantize(model, bits=2.75, calibration=cal, quantizer=q, salience=salience); save_quantized(model, "/tmp/smol_mem", overwrite=True); t1 = time.time()
    del model
    stream_quantize(src, "/tmp/smol_str", 2.75, calibration=cal, quantizer=q, salience=salience, overwrite=True); t2 = time.time()
    a = load_file("/tmp/smol_mem/model.safetensors"); b = load_file("/tmp/smol_str/model.safetensors")
    diff = [k for k in a if k not in b or not (a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]))]
    ma, mb = json.load(open("/tmp/smol_mem/sfmp.json")), json.load(open("/tmp/smol_str/sfmp.json"))
    print(f"SmolLM2 {q}, {salience} salience: {len(a)} tensors, keys equal {set(a) == set(b)}, differing {len(diff)} {diff[:3]}, "
          f"checksums equal {ma['checksums'] == mb['checksums']}, in-memory {t1 - t0:.0f} s, streamed {t2 - t1:.0f} s", flush=True)
