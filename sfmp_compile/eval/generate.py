"""``sfmp generate``: load a model or an SFMP checkpoint, stream a greedy continuation, time it.

Eager runs go through ``model.generate`` with a ``transformers.TextStreamer``; ``compiled=True``
runs the gpt-fast-style ``decode.StaticDecoder`` (static KV cache, one fullgraph graph per input
length) under ``sfmp_backend()`` for a quantized model, plain Inductor for a float one, after a
timed warm-up that compiles the prompt's and the one-token graph. Both stop at the tokenizer's EOS.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..linear import SFMPLinear
from ..progress import bar
from .decode import StaticDecoder
from .models import load_named
from .quality import is_checkpoint, load_checkpoint


def load_for_generation(source: str):
    """``(model, tokenizer)`` for an SFMP checkpoint directory (``load_quantized`` and the tokenizer
    saved beside it) or anything ``load_named`` takes ('smollm2', 'tiny', a local model directory, a
    reachable hub id). Eval mode."""
    return load_checkpoint(source) if is_checkpoint(source) else load_named(source)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, SFMPLinear) for m in model.modules())


def _eos(model, tok) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, (list, tuple)) else [ids]
    return {int(i) for i in ids + [tok.eos_token_id] if i is not None}


@torch.inference_mode()
def _static_generate(dec: StaticDecoder, ids: torch.Tensor, max_new_tokens: int, eos: set[int], streamer) -> list[int]:
    dec.reset()
    if streamer is not None:
        streamer.put(ids[0])  # the prompt, which a TextStreamer with skip_prompt=True expects first and drops
    logits = dec(ids)
    new = []
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1, keepdim=True)
        new.append(int(nxt))
        if streamer is not None:
            streamer.put(nxt[0])
        if new[-1] in eos or len(new) == max_new_tokens:
            break
        logits = dec(nxt)
    return new


def generate(model: nn.Module, tok, prompt: str, max_new_tokens: int = 64, compiled: bool = False,
             stream: bool = True) -> dict:
    """Greedy continuation of ``prompt``, streamed to stdout as it is made (``stream``).

    Returns new_ids (list of int), text, seconds (prompt + decode, compile excluded), tokens_per_s,
    compile_s (``compiled`` only) and backend ("eager", "sfmp_backend()" or "inductor").
    """
    from transformers import TextStreamer
    enc = tok(prompt, return_tensors="pt")
    ids = enc["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError("--prompt is empty after tokenization")
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True) if stream else None
    eos = _eos(model, tok)
    info: dict = {"backend": "eager"}
    if compiled:
        from ..backend import sfmp_backend
        backend = sfmp_backend() if is_quantized(model) else "inductor"
        info["backend"] = "sfmp_backend()" if is_quantized(model) else "inductor"
        dec = StaticDecoder(model, ids.shape[1] + max_new_tokens, backend=backend)
        t0 = time.perf_counter()
        # Warm-up: the prompt's graph and the one-token graph are compiled here, not in the timing.
        with bar(total=2, desc=f"compile ({info['backend']})", unit="graph") as b, torch.inference_mode():
            dec.reset()
            logits = dec(ids)
            b.update(1)
            dec(logits.argmax(-1, keepdim=True))
            b.update(1)
        info["compile_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        new = _static_generate(dec, ids, max_new_tokens, eos, streamer)
    else:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        t1 = time.perf_counter()
        with torch.inference_mode():
            outs = model.generate(input_ids=ids, attention_mask=enc["attention_mask"], max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad, eos_token_id=sorted(eos) or None,
                                  streamer=streamer)
        new = outs[0, ids.shape[1]:].tolist()
    if streamer is not None and compiled:
        streamer.end()
    seconds = time.perf_counter() - t1
    info.update(new_ids=new, text=tok.decode(new, skip_special_tokens=True), seconds=seconds,
                tokens_per_s=len(new) / seconds if seconds > 0 else float("inf"))
    return info
