"""Per-weight salience of every quantized linear layer (step 1 of SFMP).

Three estimators, all returning fp32 tensors shaped like each weight [out, in]:
  weight      S = W²                         data-free
  activation  S = W² ⊙ E[x²] (per input col) one forward pass over calibration batches
  fisher      S = Σ_n (∂L_n/∂W)²             the paper's diagonal empirical Fisher, one
                                             backward per calibration sequence, fp32 accumulation
Raw values are compared across layers (no per-layer normalisation), as the paper does.

``SALIENCES`` is the one table of estimators: every name a user may pass as ``salience=`` is a key
there, and ``compute_salience`` dispatches through it. Adding a salience = one estimator plus one
table entry here, and its test.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .config import SALIENCE_KINDS
from .progress import bar


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear whose weight is stored [in, out]. Matched by name so
    that transformers need not be imported."""
    return type(module).__name__ == "Conv1D"


def is_linear(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D, the layers SFMP quantizes."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] weight of an nn.Linear or a transformers Conv1D (stored [in, out])."""
    if is_conv1d(module):
        return module.weight.t()
    return module.weight


def salience_from_moments(weight: torch.Tensor, moments: torch.Tensor | None = None) -> torch.Tensor:
    """S = W² ⊙ E[x²] (E[x²] per input column, broadcast over rows), or W² when ``moments`` is None.

    weight: [out, in] float; moments: fp32 [in] or None. Returns fp32 [out, in] on weight's device.
    """
    s = weight.detach().float().pow(2)
    return s if moments is None else s * moments.to(s.device)[None, :]


def weight_salience(model: nn.Module | None, layers: Mapping[str, nn.Module], calibration: Iterable | None = None,
                    moments: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Data-free salience W², fp32 [out, in] per layer (model, calibration and moments unused)."""
    return {name: salience_from_moments(linear_weight(m)) for name, m in layers.items()}


def run_model(model: nn.Module, batch) -> object:
    """Call a model on one calibration item, the one convention every calibration user shares
    (activation and fisher salience, GPTQ's Hessians): a tensor (token ids [B, T] / [T], or any
    float batch), a dict of kwargs, or a tuple/list of positional args.

    A transformers model (it has ``.config``) gets a tensor as ``input_ids`` ([T] -> [1, T]) and
    ``use_cache=False`` (a KV cache is useless here and costs memory); any other module is called
    as ``model(tensor)``, ``model(**dict)`` or ``model(*args)``.
    """
    hf = hasattr(model, "config")
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
    elif isinstance(batch, torch.Tensor):
        if not hf:
            return model(batch)
        kwargs = {"input_ids": batch if batch.dim() > 1 else batch[None]}
    else:
        raise TypeError(f"a calibration item must be a tensor, a dict of model kwargs or a tuple of args, "
                        f"got {type(batch).__name__}")
    if hf:
        kwargs.setdefault("use_cache", False)
    return model(**kwargs)


def calibration_dtype(dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype calibration passes (E[x²], Fisher, GPTQ's Hessians) compute in for tensors of
    ``dtype`` on ``device``: fp32 for fp16 / bf16 on the CPU, else ``dtype`` itself. Why: a CPU
    without native bf16 runs half-precision matmuls on slow software paths, a backward two orders
    of magnitude slower than fp32 (docs/SCALE.md (d)). fp32 also rounds less, and the values are
    the same (a half-precision number is exactly an fp32 one)."""
    half = dtype in (torch.float16, torch.bfloat16)
    return torch.float32 if half and torch.device(device).type == "cpu" else dtype


@contextmanager
def calibration_precision(model: nn.Module):
    """For the duration, every parameter and buffer of ``model`` whose ``calibration_dtype``
    differs from its dtype holds an fp32 copy; the original tensors are put back afterwards,
    untouched (not cast back). Costs an fp32 copy of those tensors; a no-op for fp32 models."""
    params, buffers = [], []
    try:
        for p in model.parameters():  # each tied parameter once
            if calibration_dtype(p.dtype, p.device) != p.dtype:
                params.append((p, p.data))
                p.data = p.data.float()
        for mod in model.modules():
            for k, b in mod._buffers.items():
                if b is not None and b.is_floating_point() and calibration_dtype(b.dtype, b.device) != b.dtype:
                    buffers.append((mod, k, b))
                    mod._buffers[k] = b.float()
        yield model
    finally:
        for p, data in params:
            p.data = data
        for mod, k, b in buffers:
            mod._buffers[k] = b


# The largest |w| any width can store: scales are fp16 (≤ 65504) and a group's range is at most
# 255 scales at 8 bits (quantizers/minmax.py gives the exact per-width rule).
MAX_ABS_WEIGHT = 65504.0 * 255


def check_weights(layers: Mapping[str, nn.Module]) -> None:
    """Refuse, naming the layer and the problem, weights that no salience or quantizer can handle:
    non-float, meta, NaN/inf, or so large (> ~1.7e7) that fp16 scales cannot store them."""
    for name, m in layers.items():
        w = linear_weight(m)
        if not w.is_floating_point():
            raise TypeError(f"{name}: weight dtype {w.dtype} is not a floating-point type; SFMP quantizes float weights only")
        if w.is_meta:
            raise ValueError(f"{name}: weight is on the meta device (not materialised); load real weights first")
        wd = w.detach()
        if not torch.isfinite(wd).all():
            raise ValueError(f"{name}: weight contains NaN or inf; refusing to quantize it")
        amax = float(wd.abs().max()) if wd.numel() else 0.0
        if amax > MAX_ABS_WEIGHT:
            raise ValueError(f"{name}: weight magnitude {amax:.3g} overflows what fp16 scales can store "
                             f"(|w| ≤ {MAX_ABS_WEIGHT:.3g} at 8 bits); refusing to quantize it")


@contextmanager
def _input_hooks(layers: Mapping[str, nn.Module], fn):
    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: fn(n, args[0])) for name, m in layers.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def moment_contribution(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One calibration item's share of E[x²]: (Σ_t x_t² fp32 [in], tokens t). x: a layer's input
    [..., in]. The one formula the in-memory and the streamed paths (stream.py) both sum."""
    x = x.detach().float().reshape(-1, x.shape[-1])
    return x.pow(2).sum(0), x.shape[0]


def input_second_moments(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable) -> dict[str, torch.Tensor]:
    """E[x_k²] over all calibration tokens for each layer's input columns, fp32 [in] per layer.

    Summed item by item in calibration order (fp32), then divided once: the order stream.py's
    ``OrderedSums`` reproduces across processes, so both give the same bits."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name, x):
        s, n = moment_contribution(x)
        sums[name] = sums[name] + s if name in sums else s
        counts[name] = counts.get(name, 0) + n

    n_batches = 0
    with calibration_precision(model), _input_hooks(layers, record), torch.no_grad():
        for batch in bar(calibration, desc="calibration E[x²]", unit="batch"):
            run_model(model, batch)
            n_batches += 1
    if n_batches == 0:
        raise ValueError("activation salience needs calibration data, but the calibration iterable was empty")
    missing = [n for n in layers if n not in sums]
    if missing:
        raise ValueError(f"calibration never reached these layers: {missing[:5]}")
    return {n: sums[n] / counts[n] for n in layers}


def activation_salience(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable,
                        moments: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """S = W² ⊙ E[x²] (broadcast over rows), fp32 [out, in] per layer.

    moments: E[x²] per layer (fp32 [in]) already measured on ``calibration``, or None to measure it.
    """
    if moments is None:
        moments = input_second_moments(model, layers, calibration)
    return {n: salience_from_moments(linear_weight(m), moments[n]) for n, m in layers.items()}


def _split_sequences(batch):
    """Yield one-sequence items, in the batch's own form, so L_n is the loss of sequence n as the
    paper's Fisher requires: rows of a tensor ([T] is one sequence), of a dict's batch-shaped values,
    or of a tuple's batch-shaped tensors."""
    if isinstance(batch, torch.Tensor):
        batch = batch if batch.dim() > 1 else batch[None]
        for i in range(batch.shape[0]):
            yield batch[i : i + 1]
    elif isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise TypeError("fisher salience: a dict calibration item needs 'input_ids'")
        ids = batch["input_ids"]
        for i in range(ids.shape[0]):
            yield {k: (v[i : i + 1] if isinstance(v, torch.Tensor) and v.shape[:1] == ids.shape[:1] else v) for k, v in batch.items()}
    elif isinstance(batch, (tuple, list)):
        first = next((a for a in batch if isinstance(a, torch.Tensor) and a.dim() > 0), None)
        if first is None:
            yield tuple(batch)
            return
        n = first.shape[0]
        for i in range(n):
            yield tuple(a[i : i + 1] if isinstance(a, torch.Tensor) and a.shape[:1] == (n,) else a for a in batch)
    else:
        raise TypeError(f"a calibration item must be a tensor, a dict of model kwargs or a tuple of args, "
                        f"got {type(batch).__name__}")


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"fisher salience cannot read logits from a model output of type {type(out).__name__}")


def sequence_loss(model: nn.Module, item) -> torch.Tensor:
    """L_n for one sequence. A transformers model (``.config``) given token ids: its own ``.loss``
    with labels = input_ids. Any other module, called as ``run_model`` calls it, has its output read
    as logits over the last dimension: token-id input [1, T] with logits [1, T, V] gets the causal
    next-token cross-entropy (what a causal LM's loss is); otherwise the cross-entropy against the
    model's own argmax prediction (the Fisher at the model's predicted class, which needs no labels)."""
    if hasattr(model, "config") and not isinstance(item, (tuple, list)):
        kwargs = dict(item) if isinstance(item, Mapping) else {"input_ids": item}
        out = model(**kwargs, labels=kwargs["input_ids"])
        loss = getattr(out, "loss", None)
        if loss is None:
            raise TypeError("fisher salience needs a model that returns .loss when given labels")
        return loss
    logits = _logits(run_model(model, item)).float()
    ids = item if isinstance(item, torch.Tensor) else None
    if (ids is not None and not ids.is_floating_point() and logits.dim() == 3 and ids.dim() == 2
            and logits.shape[:2] == ids.shape and ids.shape[1] > 1):
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    flat = logits.reshape(-1, logits.shape[-1])
    return nn.functional.cross_entropy(flat, flat.detach().argmax(-1))


def fisher_salience(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable,
                    moments: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher Σ_n (∂L_n/∂W)², L_n = mean next-token cross-entropy of sequence n;
    fp32 [out, in] per layer (``moments`` unused).

    Takes the calibration items ``run_model`` takes; L_n as ``sequence_loss`` defines it (a
    transformers LM's own loss; for any other module, cross-entropy of its output read as logits).
    Gradients flow only into the linear weights (everything else frozen for the duration) and are
    squared into fp32 sums. Computed in ``calibration_dtype`` (fp32 for a half-precision model on
    the CPU).
    """
    params = {n: m.weight for n, m in layers.items()}
    saved = {p: p.requires_grad for p in model.parameters()}
    saved_grads = {p: p.grad for p in params.values()}
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    n_seq = 0
    # Gradient checkpointing: a *reentrant* checkpoint only records a graph when its input requires
    # grad, and the frozen embeddings' output does not, so every gradient came out silently zero.
    # Making the embedding output require grad (as transformers' enable_input_require_grads does)
    # fixes that; .backward() rather than autograd.grad because reentrant checkpoints reject .grad().
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hook = emb.register_forward_hook(lambda mod, inp, out: out.requires_grad_(True)) if isinstance(emb, nn.Module) else None
    reached = False
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        with calibration_precision(model), torch.enable_grad():
            for batch in bar(calibration, desc="fisher salience", unit="batch"):
                for item in _split_sequences(batch):
                    sequence_loss(model, item).backward()
                    for n, p in params.items():
                        if p.grad is not None:
                            acc[n].add_(p.grad.float().pow_(2))  # in place: the gradient is dropped next
                            reached = True
                            p.grad = None
                    n_seq += 1
    finally:
        if hook is not None:
            hook.remove()
        for p, rg in saved.items():
            p.requires_grad_(rg)
        for p, g in saved_grads.items():
            p.grad = g
    if n_seq and not reached:
        raise ValueError("fisher salience: no gradient reached the linear layers (is the model's loss detached?)")
    if n_seq == 0:
        raise ValueError("fisher salience needs calibration data, but the calibration iterable was empty")
    out = {}
    for n, m in layers.items():
        out[n] = acc[n].t().contiguous() if is_conv1d(m) else acc[n]
    return out


Estimator = Callable[[nn.Module, Mapping[str, nn.Module], Iterable | None, Mapping[str, torch.Tensor] | None],
                     dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Salience:
    """One registered salience estimator.

    estimate(model, layers, calibration, moments) -> name -> fp32 [out, in]. layers: name -> nn.Linear
    / Conv1D; calibration: iterable of model inputs or None; moments: E[x²] per layer (fp32 [in])
    measured on that calibration, or None. needs_calibration: refuses calibration=None.
    uses_moments: reads ``moments`` (so a planner that needs E[x²] anyway measures it once and
    passes it in; a compile backend, which sees graph inputs only, can serve it).
    """

    estimate: Estimator
    needs_calibration: bool
    uses_moments: bool


SALIENCES: dict[str, Salience] = {
    "weight": Salience(weight_salience, needs_calibration=False, uses_moments=False),
    "activation": Salience(activation_salience, needs_calibration=True, uses_moments=True),
    "fisher": Salience(fisher_salience, needs_calibration=True, uses_moments=False),
}
# config sits above this module and cannot import it; it validates names against this list.
SALIENCE_KINDS[:] = SALIENCES


def compute_salience(kind: str, model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable | None,
                     moments: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Saliences fp32 [out, in] per layer from the estimator ``SALIENCES[kind]``.

    moments: E[x²] per layer (fp32 [in]) measured on ``calibration``, passed to estimators that use it
    (which then need no ``calibration`` of their own).
    """
    entry = SALIENCES.get(kind)
    if entry is None:
        raise ValueError(f"unknown salience kind {kind!r}; known: {tuple(SALIENCES)}")
    if entry.needs_calibration and calibration is None and not (entry.uses_moments and moments is not None):
        raise ValueError(f"salience='{kind}' needs calibration= data (an iterable of token-id tensors or input dicts); "
                         "use salience='weight' for a data-free run")
    check_weights(layers)
    out = entry.estimate(model, layers, calibration, moments)
    for name, s in out.items():
        if not torch.isfinite(s).all():
            why = {"activation": "the layer's inputs E[x²] overflow fp32 or contain NaN",
                   "fisher": "the loss gradients overflow fp32 or contain NaN"}.get(kind, "it overflows fp32")
            raise ValueError(f"{name}: {kind} salience is not finite ({why}); the weight itself is finite and in range")
    return out
