"""GPTQ with SFMP's block bit map, and the calibration Hessians it needs.

``gptq_quantize`` is GPTQ (Frantar et al. 2022) run on the *reordered* weight: the sweep visits the
columns in SFMP's salience order, like GPTQ's act-order, and each (row, group) is quantized at the
width its block was given. A group's scale/zero are fixed when the sweep reaches its first column,
from the weights as the error feedback of earlier columns left them.

Hessians are H = 2/n Σ x xᵀ over the n calibration tokens seen by a layer, in the layer's ORIGINAL
input-column order (``quantize_weight`` permutes them). ``collect_hessians`` gathers all of them in one
pass (memory: one K×K matrix per layer). ``gptq_model`` is what ``quantize(quantizer="gptq")`` uses:
for decoder stacks it goes decoder layer by decoder layer, feeding each layer the outputs of the
already-quantized layers before it, as GPTQ does, so live memory is one decoder layer's Hessians plus
the calibration hidden states.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ..progress import bar
from ..salience import calibration_precision, is_conv1d, run_model as _run
from .minmax import minmax_quantize, warn_if_zeroed


# --------------------------------------------------------------------------------------------------
# The quantizer
# --------------------------------------------------------------------------------------------------

def permute_hessian_(h: torch.Tensor, order: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """h[order][:, order] written into h's own storage (h: [K, K], order: int64 [K]); returns h.

    Two passes of ``chunk`` rows (then columns) at a time, so the only work space is a chunk × K
    slice (15 MB at K = 14336) instead of the two K × K copies of ``index_select`` twice; a gather
    copies values, so the result is bit-identical to it.
    """
    K = h.shape[0]
    order = order.to(h.device)
    for m in (h, h.t()):  # columns of every row, then (through the transposed view) rows
        for r in range(0, K, chunk):
            m[r : r + chunk] = m[r : r + chunk].index_select(1, order)
    return h


def _inverse_hessian_factor_(h: torch.Tensor, damp: float, factor_dtype: torch.dtype = torch.float32
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor U of (H + λI)⁻¹ (so H⁻¹ = UᵀU), λ = damp·mean(diag H), and the dead mask.

    h: fp32 [K, K], overwritten: U is returned in h's storage. One K × K work matrix of
    ``factor_dtype`` is factorised in place (column-major, so LAPACK writes into it without the
    copy torch otherwise makes), which leaves h intact as the source of a retry: 2 K² fp32 values
    at most (1.6 GB at K = 14336; fp64 work space makes it 2.5 GB, the old code held ~5 copies).
    fp32 by default: it is what GPTQ's reference implementation factorises in, it halves the work
    space and the time, and the GPTQ loss stays within 2e-5 (relative) of fp64's, no worse on
    average (benchmarks/gptq_factor_precision.py, docs/SCALE.md (c)); a failed fp32 factorisation
    is retried with more damping, as an fp64 one is.
    Dead columns (diag 0: inputs that were always zero) get H_kk = 1 so the matrix stays positive
    definite; their weights never influence the output and are zeroed by the caller. If the damped
    matrix is still not positive definite (round-off on a near-singular H), λ is raised tenfold
    until the factorisation succeeds.
    """
    K = h.shape[0]
    diag = torch.diagonal(h)
    dead = diag == 0
    diag[dead] = 1.0
    mean = float(diag.double().mean())
    lam = damp * mean if damp > 0 else 0.0
    work = torch.empty(K, K, dtype=factor_dtype, device=h.device).mT  # column-major: LAPACK's own layout
    info = torch.empty((), dtype=torch.int32, device=h.device)
    for _ in range(8):
        work.copy_(h)  # the same matrix in the other memory layout: LAPACK reads h's lower triangle, as before
        work.diagonal().add_(lam)
        torch.linalg.cholesky_ex(work, out=(work, info))
        if int(info) == 0:
            torch.cholesky_inverse(work, out=work)
            torch.linalg.cholesky_ex(work, upper=True, out=(work, info))
            if int(info) == 0:
                h.copy_(work)
                return h, dead
        lam = max(lam * 10, 1e-8 * mean + 1e-12)
    raise ValueError("GPTQ: the calibration Hessian is not positive definite even after heavy damping")


def gptq_quantize(w: torch.Tensor, group_bits: torch.Tensor, group_size: int, hessian: torch.Tensor,
                  damp: float = 0.01, clip: bool = False, block: int = 128, name: str | None = None,
                  overwrite: bool = False, factor_dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of one reordered weight under a per-(row, group) bit map.

    w: float [N, K], rows and columns already in SFMP order. group_bits: int [N, G], G = ceil(K /
    group_size), width of row n's group j. hessian: fp32 [K, K] = 2/n Σ x xᵀ, ALREADY permuted to
    w's column order. damp: λ = damp·mean(diag H) added to the diagonal. clip: per group, pick the
    min-max shrink ratio (minmax's grid) with the least diag(H)-weighted error on the error-updated
    weights. block: columns per lazy-update block (rounded to a multiple of group_size so a group
    never straddles two blocks and its parameters come from fully updated weights). name: the
    layer's name for the all-zeros warning. Scales follow minmax's rule (relative to each group's
    range, fp16 limits as ``minmax`` documents). overwrite: use ``hessian`` (and ``w``, when fp32)
    as work space instead of copying them (the Hessian ends up holding the inverse factor; 0.8 GB
    saved per copy at K = 14336); the results are the same either way. factor_dtype: the dtype H is
    factorised in (fp32, or fp64 at twice the work space; ``_inverse_hessian_factor_``).

    Returns codes uint8 [N, K], scales fp32 [N, G] (fp16-exact), zeros fp32 [N, G] (integers),
    the same contract as ``minmax_quantize``.
    """
    W = w.detach().float()
    if not overwrite and W.data_ptr() == w.data_ptr():
        W = W.clone()
    N, K = W.shape
    G = -(-K // group_size)
    if tuple(group_bits.shape) != (N, G):
        raise ValueError(f"group_bits must be [{N}, {G}] for a [{N}, {K}] weight with group_size {group_size}, "
                         f"got {tuple(group_bits.shape)}")
    if tuple(hessian.shape) != (K, K):
        raise ValueError(f"hessian must be [{K}, {K}], got {tuple(hessian.shape)}")
    if not all(bool(torch.isfinite(hessian[r : r + 1024]).all()) for r in range(0, K, 1024)):  # no K×K mask
        raise ValueError("GPTQ: the calibration Hessian contains NaN or inf")
    if not (isinstance(damp, (int, float)) and damp >= 0 and damp == damp and damp != float("inf")):
        raise ValueError(f"GPTQ: damp must be a finite number >= 0, got {damp!r}")
    dev = W.device
    hdiag = torch.diagonal(hessian).to(dev).float().clamp_min(0)  # a copy: the factor overwrites H
    h = hessian.to(dev, torch.float32)
    if not overwrite and h.data_ptr() == hessian.data_ptr():
        h = h.clone()
    U, dead = _inverse_hessian_factor_(h, damp, factor_dtype)
    del h
    W[:, dead] = 0
    # max |w| as far as the output can see it (dead columns never matter), for the all-zeros warning
    lo, hi = W.aminmax()
    live_peak = torch.maximum(lo.abs(), hi.abs()).reshape(1)
    block = max(1, block // group_size) * group_size

    gb = group_bits.to(dev, torch.int64)
    qmax_all = (2.0 ** gb.float()) - 1  # [N, G]
    codes = torch.zeros(N, K, dtype=torch.uint8, device=dev)
    scales = torch.zeros(N, G, dtype=torch.float32, device=dev)
    zeros = torch.zeros(N, G, dtype=torch.float32, device=dev)

    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        scale = zero = qmax = None
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                # Parameters of group g from its columns as they stand now: earlier columns' errors
                # have already been pushed into them (within this block through W1).
                g = col // group_size
                end = min(i + group_size, i2 - i1)
                _, s, z = minmax_quantize(W1[:, i:end], gb[:, g : g + 1], group_size, clip=clip,
                                          col_weight=hdiag[col : i1 + end] if clip else None, check=False)
                scale, zero, qmax = s[:, 0], z[:, 0], qmax_all[:, g]
                scales[:, g], zeros[:, g] = scale, zero
            x = W1[:, i]
            q = torch.clamp(torch.round(x / scale) + zero, torch.zeros_like(qmax), qmax)
            codes[:, col] = q.to(torch.uint8)
            err = (x - scale * (q - zero)) / U1[i, i]
            # Error feedback onto the not-yet-quantized columns of this block (row i of U = H⁻¹ factor).
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        # Lazy batch update of every later column, once per block (the GPTQ trick that makes it fast).
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    warn_if_zeroed(live_peak, codes, zeros, group_size, name)
    return codes, scales, zeros


# --------------------------------------------------------------------------------------------------
# Hessians
# --------------------------------------------------------------------------------------------------

def hessian_contribution(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One calibration item's share of a Hessian: (Σ_t x_t x_tᵀ fp32 [K, K], tokens t). x: the layer's
    input [..., K]. Summed in item order and scaled by ``hessian_from_sum`` (here and in stream.py)."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    return x.t() @ x, x.shape[0]


def hessian_from_sum(xtx_sum: torch.Tensor, n: int) -> torch.Tensor:
    """H = 2/n Σ x xᵀ from the summed contributions, fp32 [K, K], scaled in place (xtx_sum is
    returned: no second K × K matrix; the same bits as ``xtx_sum * (2 / n)``)."""
    return xtx_sum.mul_(2.0 / n)


class _HessianAccumulator:
    """Running H = 2/n Σ x xᵀ, fp32 [K, K], for the inputs of a set of linear layers."""

    def __init__(self, layers: Mapping[str, nn.Module]):
        self.layers = dict(layers)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def record(self, name: str, x: torch.Tensor) -> None:
        xtx, n = hessian_contribution(x)
        if name in self.sums:
            self.sums[name] += xtx
        else:
            self.sums[name] = xtx
        self.counts[name] = self.counts.get(name, 0) + n

    @contextmanager
    def hooks(self):
        handles = [m.register_forward_pre_hook(lambda mod, args, n=name: self.record(n, args[0]))
                   for name, m in self.layers.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def result(self) -> dict[str, torch.Tensor]:
        missing = [n for n in self.layers if n not in self.sums]
        if missing:
            raise ValueError(f"calibration never reached these layers: {missing[:5]}")
        return {n: hessian_from_sum(self.sums[n], self.counts[n]) for n in self.layers}


def collect_hessians(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable) -> dict[str, torch.Tensor]:
    """H = 2/n Σ_t x_t x_tᵀ for every layer in one pass over ``calibration`` with the current weights.

    layers: name -> nn.Linear / Conv1D. calibration: what ``salience.run_model`` takes (tensors,
    kwargs dicts, argument tuples).
    Returns name -> fp32 [K, K] in the layer's ORIGINAL input-column order. Memory: all Hessians at
    once (``gptq_model`` bounds it to one decoder layer for decoder stacks).
    """
    acc = _HessianAccumulator(layers)
    n = 0
    with calibration_precision(model), acc.hooks(), torch.no_grad():
        for batch in calibration:
            _run(model, batch)
            n += 1
    if n == 0:
        raise ValueError("GPTQ needs calibration data, but the calibration iterable was empty")
    return acc.result()


# --------------------------------------------------------------------------------------------------
# Layer-by-layer GPTQ over a decoder stack
# --------------------------------------------------------------------------------------------------

class _Captured(Exception):
    """Raised by the first decoder layer's pre-hook: its inputs are all we need from the model."""


def find_decoder_layers(model: nn.Module, names: Iterable[str]) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of repeated blocks holding most of the given linears (``model.layers``,
    ``transformer.h`` ...), or None. Returns (qualified name, module list)."""
    names = list(names)
    best, best_hits = None, 0
    for lname, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        hits = sum(1 for n in names if n.startswith(lname + "."))
        if hits > best_hits:
            best, best_hits = (lname, mod), hits
    if best is None or best_hits < max(1, len(names) // 2):
        return None
    return best


@contextmanager
def _swapped_weights(modules: Mapping[nn.Module, torch.Tensor]):
    """Temporarily give linears new [out, in] weights (restored afterwards, even on error)."""
    saved = {}
    try:
        for m, w in modules.items():
            saved[m] = m.weight.data
            m.weight.data = (w.t() if is_conv1d(m) else w).to(m.weight.dtype).contiguous()
        yield
    finally:
        for m, w in saved.items():
            m.weight.data = w


def layer_output(out):
    """A decoder layer's hidden states [B, T, H] from what it returns (the tensor, or a tuple's first)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot read hidden states from a decoder layer output of type {type(out).__name__}")


def capture_block_inputs(model: nn.Module, block: nn.Module, calibration: Iterable) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) ``block`` (a model's first decoder layer) receives for each calibration item,
    in order: the model runs only up to that block's pre-hook, so later blocks may still be on the
    meta device (stream.py relies on this)."""
    inputs = []

    def capture(mod, args, kwargs):
        inputs.append((args, kwargs))
        raise _Captured

    calibration = list(calibration)
    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in calibration:
                try:
                    _run(model, batch)
                except _Captured:
                    pass
    finally:
        handle.remove()
    if len(inputs) != len(calibration):
        raise ValueError("GPTQ: the calibration data never reached the first decoder layer")
    return inputs


def block_input(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    """A block's (args, kwargs) with its hidden states replaced by ``h`` (the previous block's output)."""
    if args:
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def block_outputs(blk: nn.Module, inputs: list, quantized_w: Mapping[nn.Module, torch.Tensor] | None = None) -> list:
    """The next block's inputs: ``blk`` run on each (args, kwargs), with its linears' weights
    temporarily replaced by ``quantized_w`` (module -> [out, in]), as a quantized model feeds them."""
    outs = []
    with torch.no_grad(), _swapped_weights(quantized_w or {}):
        for args, kwargs in inputs:
            outs.append(block_input(args, kwargs, layer_output(blk(*args, **kwargs))))
    return outs


def gptq_model(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable,
               quantize_layer: Callable[[str, torch.Tensor], tuple[object, torch.Tensor]],
               sequential: bool = True, progress: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """Quantize ``layers`` with GPTQ, Hessians measured on the inputs a quantized model would see.

    quantize_layer(name, hessian fp32 [K, K] original order) -> (result, dequantized weight [out, in]
    in original order): quantizes one layer (e.g. ``quantize_weight`` + ``dequantize()``).
    Decoder stacks (a ModuleList of blocks holding the layers) are processed block by block: capture
    the first block's inputs for every calibration item, then per block collect its linears'
    Hessians, quantize them, and rerun the block with the dequantized weights to get the next block's
    inputs. Peak extra memory: one block's Hessians plus the calibration hidden states. Layers outside
    the stack (and models without one, or ``sequential=False``) fall back to ``collect_hessians``
    on the float model. The model's weights are restored before returning. The blocks run in
    ``salience.calibration_dtype`` (fp32 for a half-precision model on the CPU).
    Returns name -> result.
    """
    calibration = list(calibration)
    if not calibration:
        raise ValueError("GPTQ needs calibration data, but the calibration iterable was empty")
    with calibration_precision(model):  # Hessians in fp32 on the CPU (salience.calibration_dtype)
        found = find_decoder_layers(model, layers) if sequential else None
        results: dict[str, object] = {}
        done: set[str] = set()
        if found is not None:
            prefix, blocks = found
            inputs = capture_block_inputs(model, blocks[0], calibration)
            try:
                for i, blk in enumerate(bar(blocks, desc="GPTQ", unit="decoder layer")):
                    bprefix = f"{prefix}.{i}."
                    mine = {n: m for n, m in layers.items() if n.startswith(bprefix)}
                    quantized_w: dict[nn.Module, torch.Tensor] = {}
                    if mine:
                        acc = _HessianAccumulator(mine)
                        with torch.no_grad(), acc.hooks():
                            for args, kwargs in inputs:
                                blk(*args, **kwargs)
                        hess = acc.result()
                        del acc
                        for n, m in mine.items():
                            results[n], quantized_w[m] = quantize_layer(n, hess.pop(n))
                            done.add(n)
                    if i + 1 < len(blocks):
                        # The next block sees what the quantized model will feed it (GPTQ's sequential mode).
                        inputs = block_outputs(blk, inputs, quantized_w)
                    if progress is not None:
                        progress(i + 1, len(blocks))
            finally:
                del inputs
        rest = {n: m for n, m in layers.items() if n not in done}
        if rest:
            hess = collect_hessians(model, rest, calibration)
            for n in rest:
                results[n], _ = quantize_layer(n, hess.pop(n))
    return results
