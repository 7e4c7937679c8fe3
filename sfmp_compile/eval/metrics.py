"""Quality metrics for a (quantized) causal LM against text and against its full-precision reference.

Torch only, and independent of the rest of sfmp_compile, so the metrics can judge any model object that
maps ``input_ids [B, L]`` to logits ``[B, L, V]`` (a transformers model, a compiled one, a plain module).
All windows are non-overlapping: a window of ``context`` tokens predicts its own tokens 2..L from the
tokens before them inside that window only.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from ..progress import bar


def _check_tokens(tokens: torch.Tensor) -> torch.Tensor:
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2 or tokens.shape[0] != 1 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a LongTensor [1, T], got {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.shape[1] < 2:
        raise ValueError("need at least 2 tokens to predict anything")
    return tokens


def _windows(tokens: torch.Tensor, context: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield ``[B, L]`` batches of consecutive non-overlapping windows; a last partial window alone."""
    if context < 2 or batch_size < 1:
        raise ValueError(f"context must be >= 2 and batch_size >= 1, got {context}, {batch_size}")
    tokens = _check_tokens(tokens)[0]
    n_full = tokens.numel() // context
    full = tokens[:n_full * context].view(n_full, context)
    for start in range(0, n_full, batch_size):
        yield full[start:start + batch_size]
    rest = tokens[n_full * context:]
    if rest.numel() >= 2:  # a single leftover token has nothing to predict from
        yield rest.unsqueeze(0)


def _device(model) -> torch.device:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits ``[B, L, V]`` of ``model`` on ``ids [B, L]``."""
    ids = ids.to(_device(model))
    # A KV cache is useless for one-shot scoring and costs memory; only transformers models take the flag.
    out = model(input_ids=ids, use_cache=False) if hasattr(model, "config") else model(ids)
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
    return logits.float()


@contextlib.contextmanager
def _scoring(*models):
    """inference_mode plus eval mode (dropout off), restoring each model's previous mode afterwards."""
    modes = [(m, m.training) for m in models if isinstance(m, torch.nn.Module)]
    try:
        for m, _ in modes:
            m.eval()
        with torch.inference_mode():
            yield
    finally:
        for m, was_training in modes:
            m.train(was_training)


def window_logits(model, tokens: torch.Tensor, context: int = 512, batch_size: int = 1) -> list[torch.Tensor]:
    """fp32 logits ``[B, L, V]`` of ``model`` on each window of ``tokens`` (``LongTensor [1, T]``), in order.

    Kept in memory as a reference that ``score`` can judge many models against without running the
    reference again; pass the same ``tokens``, ``context`` and ``batch_size`` to ``score``.
    """
    with _scoring(model):
        windows = list(_windows(tokens, context, batch_size))
        return [_logits(model, ids) for ids in bar(windows, desc="reference logits", unit="window")]


def _logits_of(source, windows: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Per-window logits of a model, or the windows' cached logits when ``source`` is a list of them."""
    if isinstance(source, (list, tuple)):
        if len(source) != len(windows) or any(lg.shape[:2] != w.shape for lg, w in zip(source, windows)):
            raise ValueError("cached logits do not match these tokens' windows (same context and batch_size?)")
        yield from source
    else:
        for ids in windows:
            yield _logits(source, ids)


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Summed next-token NLL of a window: logits ``[B, L, V]`` predict ``ids [B, L]`` shifted by one."""
    targets = ids[:, 1:].to(logits.device)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="sum").double().item()


def score(model, tokens: torch.Tensor, context: int = 512, batch_size: int = 1, reference=None) -> dict:
    """Perplexity of ``model`` and, given a ``reference``, how far its outputs are from it, in one pass.

    tokens: ``LongTensor [1, T]`` (or ``[T]``), cut into non-overlapping windows of ``context`` tokens
    (the last may be shorter), ``batch_size`` windows per forward. ``model`` and ``reference`` are
    each a model mapping ``input_ids [B, L]`` to logits ``[B, L, V]``, or ``window_logits`` of one.
    Returns floats:

      ppl      exp(mean NLL) over every token except each window's first (it has no context)
      ref_ppl  the same for the reference
      kl       mean over all positions of KL(p_reference || p_model), nats, fp32 softmaxes
      sqnr_db  10·log10(‖ref logits‖² / ‖ref logits − logits‖²) over all windows together, fp64

    ``ref_ppl``, ``kl`` and ``sqnr_db`` are None without a reference.
    """
    windows = list(_windows(tokens, context, batch_size))
    refs = _logits_of(reference, windows) if reference is not None else iter([None] * len(windows))
    nll = ref_nll = kl = signal = noise = 0.0
    n_pred = n_pos = 0
    with _scoring(model, reference):
        for ids, logits, ref in bar(zip(windows, _logits_of(model, windows), refs), total=len(windows),
                                    desc="scoring", unit="window"):
            nll += _nll(logits, ids)
            n_pred += ids.shape[0] * (ids.shape[1] - 1)
            if ref is None:
                continue
            approx = logits.to(ref.device)
            ref_nll += _nll(ref, ids)
            kl += F.kl_div(F.log_softmax(approx, -1), F.log_softmax(ref, -1), log_target=True,
                           reduction="sum").double().item()
            n_pos += ids.numel()
            signal += ref.double().pow(2).sum().item()
            noise += (ref.double() - approx.double()).pow(2).sum().item()
    out = {"ppl": math.exp(nll / n_pred), "ref_ppl": None, "kl": None, "sqnr_db": None}
    if reference is not None:
        out.update(ref_ppl=math.exp(ref_nll / n_pred), kl=kl / n_pos, sqnr_db=_db(signal, noise))
    return out


def perplexity(model, tokens: torch.Tensor, context: int = 512, batch_size: int = 1) -> float:
    """exp(mean next-token NLL) of ``model`` over ``tokens`` (``LongTensor [1, T]``): ``score``'s ppl.

    The text is cut into non-overlapping windows of ``context`` tokens (the last may be shorter);
    every token except each window's first is predicted, and the NLL is averaged over all of them.
    ``batch_size`` windows go through the model at once.
    """
    return score(model, tokens, context, batch_size)["ppl"]


def kl_divergence(reference_model, model, tokens: torch.Tensor, context: int = 512,
                  batch_size: int = 1) -> float:
    """Mean over token positions of KL(p_reference || p_model) in nats: ``score``'s kl.

    Same windows as ``perplexity``; every position of every window counts (each one defines a
    next-token distribution). Softmaxes are taken in fp32 whatever the models' dtypes.
    """
    return score(model, tokens, context, batch_size, reference=reference_model)["kl"]


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10*log10(||ref||^2 / ||ref - approx||^2)``.

    Any shapes that broadcast; computed in fp64. ``inf`` when the tensors are equal.
    """
    reference = reference.detach().double()
    noise = (reference - approx.detach().double().to(reference.device)).pow(2).sum().item()
    return _db(reference.pow(2).sum().item(), noise)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def output_sqnr(reference_model, model, tokens: torch.Tensor, context: int = 512,
                batch_size: int = 1) -> float:
    """SQNR in dB of ``model``'s final logits against ``reference_model``'s, over all windows together:
    ``score``'s sqnr_db, which equals ``sqnr_db`` of the two models' concatenated logits ``[T, V]``."""
    return score(model, tokens, context, batch_size, reference=reference_model)["sqnr_db"]


def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int = 24) -> str:
    """The text ``model`` generates greedily after ``prompt`` (new tokens only, special tokens dropped)."""
    enc = tokenizer(prompt, return_tensors="pt").to(_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with _scoring(model):
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
