"""``sfmp quantize --stream``: the command-line side of streamed (and torchrun-distributed)
quantization, kept out of cli.py, which holds every other command."""
from __future__ import annotations

import os
from pathlib import Path

from .cli import CLIError, _budget, _calibration


def cmd_quantize_stream(args, config) -> int:
    """``sfmp quantize --stream DIR``: one decoder layer at a time (``stream.py``); under torchrun the
    calibration is split across ranks and rank 0 writes the checkpoint."""
    from .eval.models import SMOLLM2, smollm2_cache_path
    from .stream import stream_quantize
    if _budget(args) is not None:
        raise CLIError("--stream takes --bits (a --bpw / --size-mb budget re-plans the whole model's saliences, "
                       "which streaming does not keep); quantize in memory for a budget")
    src = str(smollm2_cache_path()) if args.model.lower() == SMOLLM2 else str(Path(args.model).expanduser())
    if not Path(src).is_dir():
        raise CLIError(f"--stream reads a local transformers model directory (config.json + *.safetensors); "
                       f"{args.model!r} is not one")
    cal = tok = None
    if config.salience != "weight" or config.quantizer == "gptq":
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise CLIError(f"{src}: no tokenizer to make calibration text with ({str(e).splitlines()[0][:160]}); "
                           "use --salience weight with --quantizer rtn for a data-free run") from None
        cal = _calibration(tok, args)
    r = stream_quantize(src, args.out, config.bits, calibration=cal, salience=config.salience, tokenizer=tok,
                        overwrite=args.overwrite, bit_choices=config.bit_choices, block_rows=config.block_rows,
                        group_size=config.group_size, quantizer=config.quantizer, tp_shards=config.tp_shards)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"quantized {r['decoder_layers']} decoder layers of {args.model} streamed in {r['total_s']:.1f} s "
              f"({r['s_per_layer']:.2f} s/layer) -> {args.out}\n  achieved weight_bits {r['weight_bits']:.3f}")
    return 0
