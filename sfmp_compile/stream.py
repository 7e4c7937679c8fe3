"""Layer-streamed quantization: a transformers causal-LM directory (config.json + safetensors shards)
quantized one decoder layer at a time, never holding the whole model.

The model is a skeleton built from config.json with every parameter on the meta device (buffers such
as rotary frequencies real); a decoder layer's parameters are read from the shards when it is
processed and dropped after. Calibration items run through the input embeddings up to the first
decoder layer (``gptq.capture_block_inputs``), and their hidden states are carried forward layer by
layer. Two passes:

1. salience (float layers): per decoder layer, E[x²] of each linear's inputs (if needed), the
   salience S = W² ⊙ E[x²] (or W²), and from it only what the global allocation needs
   (``plan.LayerSummary``: orders and block salience sums); then ``plan.plan_from_summaries``, the
   allocation ``plan.make_plan`` itself uses.
2. quantize: per decoder layer, RTN, or GPTQ with Hessians from the inputs that the already-quantized
   layers produce (``gptq_model``'s sequential mode, the same block steps), written tensor by tensor
   to model.safetensors (``shards.SafetensorsWriter``) with the same sfmp.json as ``save_quantized``.

Peak memory: one decoder layer (plus, for GPTQ, its Hessians and the quantizer's work space) and
the calibration hidden states. Sums over calibration items use the in-memory path's formulas in its
order, so the checkpoint is the one ``quantize`` + ``save_quantized`` write, tensor for tensor;
under torchrun they are split across ranks and summed in that same order (distributed.py).
Fisher salience, which needs a backward pass through the whole model, replaces pass 1 with
stream_fisher.py's layer-by-layer backward.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from .checkpoint import (WEIGHTS_METADATA, _parameters_on_meta, check_out_dir, checkpoint_meta, layer_meta,
                         write_checkpoint_dir)
from .checkpoint_files import CONFIG, CheckpointError, tensor_digest
from .config import QuantConfig, SFMPConfigError
from .distributed import OrderedSums, Ranks, from_env
from .linear import SFMPLinear
from .plan import default_regroup, find_linears, plan_from_summaries, summarize_layers
from .progress import bar
from .quantize import quantize_weight
from .quantizers.gptq import (block_outputs, capture_block_inputs, find_decoder_layers, hessian_contribution,
                              hessian_from_sum)
from .salience import (SALIENCES, calibration_dtype, check_weights, linear_weight, moment_contribution,
                       salience_from_moments)
from .shards import ShardReader, SafetensorsWriter
from .stream_fisher import SEQUENCES_NEEDED, fisher_summaries, one_sequence_each
from .stream_steps import InputHooks, materialize, release_params, run_rounds


def load_skeleton(model_dir: str, dtype: torch.dtype | None = None, num_layers: int | None = None):
    """(skeleton, reader, dtype): the config.json model with parameters on the meta device and real
    buffers, the directory's ShardReader, and the storage dtype (``dtype``, else the input
    embedding's stored dtype). num_layers: build only the first N decoder layers (a prefix run)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    if not os.path.isfile(os.path.join(model_dir, CONFIG)):
        raise CheckpointError(f"{model_dir} has no config.json: streamed quantization reads a transformers model directory")
    reader = ShardReader(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as e:
        raise CheckpointError(f"{model_dir}/config.json cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise SFMPConfigError(f"num_layers={num_layers} must be in 1..{config.num_hidden_layers}")
        config.num_hidden_layers = num_layers
    with _parameters_on_meta():
        probe = AutoModelForCausalLM.from_config(config)
    emb = _qualified(probe, probe.get_input_embeddings())
    if dtype is None:
        dtype = reader.dtype_of(emb + ".weight")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise SFMPConfigError(f"dtype must be fp32, fp16 or bf16, got {dtype}")
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), reader, dtype


def _qualified(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


class _Streamer:
    """One streamed run's state: skeleton, reader, config, ranks and the calibration hidden states."""

    def __init__(self, model_dir, config: QuantConfig, calibration, dtype, num_layers, ranks: Ranks):
        self.config, self.ranks = config, ranks
        self.model, self.reader, self.dtype = load_skeleton(model_dir, dtype, num_layers)
        # what the layers compute in while calibrating (fp32 for a half-precision model: as in memory)
        self.compute_dtype = calibration_dtype(self.dtype)
        self.layers = find_linears(self.model, config.skip)
        found = find_decoder_layers(self.model, self.layers)
        if not self.layers or found is None:
            raise ValueError(f"{model_dir}: no decoder-layer stack of linear layers found; streamed quantization "
                             "needs a transformers decoder (quantize it in memory instead)")
        self.stack, self.blocks = found
        outside = [n for n in self.layers if not n.startswith(self.stack + ".")]
        if outside:
            raise ValueError(f"layers outside the decoder stack {self.stack} cannot be streamed: {outside[:5]} "
                             "(add them to skip=, or quantize in memory)")
        state = self.model.state_dict(keep_vars=True)
        first: dict[int, str] = {}
        self.tied = {}  # alias key -> stored key, as save_quantized finds them (state-dict order)
        for k, v in state.items():
            if id(v) in first:
                self.tied[k] = first[id(v)]
            else:
                first[id(v)] = k
        self.read_as = {k: c for k, c in self.tied.items() if k not in self.reader and c in self.reader}
        self.read_as.update({c: k for k, c in self.tied.items() if c not in self.reader and k in self.reader})
        self.state_keys = [k for k in state if k not in self.tied]
        self.n_items = len(calibration) if calibration is not None else 0
        self.items = self.ranks.share(list(calibration)) if calibration is not None else []  # this rank's
        self.first_inputs = self._capture(self.items) if calibration is not None else None

    def block_layers(self, i: int) -> dict[str, nn.Module]:
        pre = f"{self.stack}.{i}."
        return {n: self.model.get_submodule(n) for n in self.layers if n.startswith(pre)}

    @contextmanager
    def outside_stack(self, head: bool = False):
        """Every parameter outside the decoder stack read for the duration (embeddings, position
        tables, final norm; the output head only if ``head`` or tied to the embeddings), then released.
        In the compute dtype, except a plain nn.Embedding input table that the head does not share
        (or when not ``head``): it stays in the stored dtype (1 GB, not 2, at 8B) with its output cast
        to the compute dtype, which is exact for a lookup."""
        out, emb = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        pre = self.stack + "."
        needed = [(n, m) for n, m in self.model.named_modules()
                  if (head or m is not out or m is emb) and not n.startswith(pre)
                  and any(p.is_meta for p in m.parameters(recurse=False))]
        lookup = type(emb) is nn.Embedding and not (head and emb is out)
        cast = emb.register_forward_hook(lambda mod, args, y: y.to(self.compute_dtype)) if lookup else None
        try:
            for n, m in needed:
                dtype = self.dtype if lookup and m is emb else self.compute_dtype
                for leaf, p in list(m._parameters.items()):
                    if p is not None and p.is_meta:
                        key = f"{n}.{leaf}" if n else leaf
                        key = self.read_as.get(key, key)
                        m._parameters[leaf] = nn.Parameter(self.reader.load([key], dtype)[key], requires_grad=False)
            yield
        finally:
            if cast is not None:
                cast.remove()
            for _, m in needed:
                release_params(m)

    def _capture(self, items: list) -> list:
        """First-decoder-layer inputs of this rank's items (the model run up to that layer)."""
        with self.outside_stack():
            return capture_block_inputs(self.model, self.blocks[0], items) if items else []

    def load_block(self, i: int, compute: bool = True) -> nn.Module:
        """Decoder layer i read from the shards, in the compute dtype (``compute``: it will run) or
        the stored one (only its weights are read)."""
        blk = self.blocks[i]
        materialize(blk, f"{self.stack}.{i}.", self.reader, self.compute_dtype if compute else self.dtype, self.read_as)
        return blk

    def run_block(self, blk: nn.Module, mods: dict, inputs: list, moments: dict | None, keep: bool = True) -> list:
        """This rank's items through ``blk`` (returns the next block's inputs when ``keep``). With a
        ``moments`` dict, E[x²] fp32 [K] of each of ``mods``' inputs is added to it, summed over
        items in item order across ranks (``OrderedSums``)."""
        if moments is None or not mods:
            return run_rounds(blk, inputs, self.ranks, self.n_items, None, keep)
        sums = OrderedSums(self.ranks, self.n_items, {n: (linear_weight(m).shape[1],) for n, m in mods.items()})
        with InputHooks(mods, lambda n, x: sums.record(n, *moment_contribution(x))):
            out = run_rounds(blk, inputs, self.ranks, self.n_items, sums, keep)
        moments.update(sums.result(lambda t, c: t / c))
        return out

    def summaries(self, need_moments: bool):
        """Pass 1: name -> LayerSummary and name -> E[x²] fp32 [K] (when measured), layer by layer."""
        kind = self.config.salience
        summaries, moments = {}, {}
        inputs = self.first_inputs
        for i in bar(range(len(self.blocks)), desc="stream salience", unit="decoder layer"):
            blk, mods = self.load_block(i, compute=need_moments), self.block_layers(i)
            check_weights(mods)
            weights = {n: linear_weight(m).detach() for n, m in mods.items()}
            if need_moments:
                inputs = self.run_block(blk, mods, inputs, moments, keep=i + 1 < len(self.blocks))
            sal = {n: salience_from_moments(w, moments[n] if SALIENCES[kind].uses_moments else None)
                   for n, w in weights.items()}
            for n, s in sal.items():
                if not torch.isfinite(s).all():
                    raise ValueError(f"{n}: {kind} salience is not finite (the layer's inputs E[x²] overflow fp32 or "
                                     "contain NaN); the weight itself is finite and in range")
            summaries.update(summarize_layers(weights, sal, self.config))
            del weights, sal
            release_params(blk)
        return {n: summaries[n] for n in self.layers}, ({n: moments[n] for n in self.layers} if moments else None)

    def quantize(self, plan, write, layers_meta: dict) -> None:
        """Pass 2: every decoder layer quantized (RTN, or GPTQ on the quantized prefix's outputs),
        its layers shared out across ranks and broadcast, ``write(key, tensor)`` called for its
        tensors (on every rank; the caller writes on rank 0 only) and each layer's sfmp.json
        geometry put in ``layers_meta``."""
        gptq = self.config.quantizer == "gptq"
        inputs = self.first_inputs
        for i in bar(range(len(self.blocks)), desc=f"stream quantize ({self.config.quantizer})", unit="decoder layer"):
            blk, mods = self.load_block(i, compute=gptq), self.block_layers(i)
            hess = {}
            if gptq and mods:
                sums = OrderedSums(self.ranks, self.n_items, {n: (linear_weight(m).shape[1],) * 2 for n, m in mods.items()})
                with InputHooks(mods, lambda n, x: sums.record(n, *hessian_contribution(x))):
                    run_rounds(blk, inputs, self.ranks, self.n_items, sums, keep=False)
                hess = sums.result(hessian_from_sum)
                del sums
            packed = {}
            for j, (n, m) in enumerate(mods.items()):
                pw = None
                if self.ranks.owner(j) == self.ranks.rank:
                    pw = quantize_weight(linear_weight(m), plan.layers[n], self.config, hess.pop(n, None), name=n,
                                         overwrite_hessian=True)
                hess.pop(n, None)
                packed[n] = self.ranks.broadcast_object(pw, self.ranks.owner(j))
            if gptq and i + 1 < len(self.blocks):
                # the next layer sees what the quantized model will feed it (GPTQ's sequential mode)
                deq = {m: packed[n].dequantize(torch.float32).to(m.weight.device) for n, m in mods.items()}
                inputs = block_outputs(blk, inputs, deq)
                del deq
            pre = f"{self.stack}.{i}."
            for k in self.state_keys:
                if k.startswith(pre) and not any(k.startswith(n + ".") for n in mods):
                    write(k, self.model.get_parameter(k).to(self.dtype) if _is_param(self.model, k)
                          else self.model.get_buffer(k))
            for n, m in mods.items():
                layers_meta[n] = layer_meta(packed[n], m.bias is not None)
                bias = None if m.bias is None else m.bias.to(self.dtype)
                for k, v in SFMPLinear(packed[n], bias).state_dict().items():
                    write(f"{n}.{k}", v)
            del packed, mods
            release_params(blk)

    def write_rest(self, write) -> None:
        """Every tensor outside the decoder stack (embeddings, final norm, head), read one at a time."""
        pre = self.stack + "."
        for k in self.state_keys:
            if k.startswith(pre):
                continue
            if _is_param(self.model, k):
                stored = self.read_as.get(k, k)
                t = self.reader.load([stored], self.dtype)[stored]
                write(k, t)
                del t
            else:
                write(k, self.model.get_buffer(k))


def _is_param(model: nn.Module, key: str) -> bool:
    owner, _, leaf = key.rpartition(".")
    return leaf in model.get_submodule(owner)._parameters


def stream_quantize(model_dir: str, out_dir: str, bits: float = 3.0, *, calibration: Iterable | None = None,
                    salience: str | None = None, tokenizer=None, overwrite: bool = False,
                    dtype: torch.dtype | None = None, num_layers: int | None = None,
                    ranks: Ranks | None = None, **options) -> dict:
    """Quantize the transformers model in ``model_dir`` decoder layer by decoder layer and write an
    SFMP checkpoint (format v2, loadable with ``load_quantized``) to ``out_dir``.

    bits, calibration (a list of token-id tensors [B, T] or kwargs dicts), salience ("activation" by
    default with calibration, else "weight"; "fisher" needs one sequence per item) and options (QuantConfig fields)
    as for ``quantize``; the checkpoint holds the same tensors as ``quantize`` + ``save_quantized``
    of the loaded model. dtype: storage dtype of the float tensors (default: as stored); calibration
    computes in ``salience.calibration_dtype`` of it, as ``quantize`` does.
    num_layers: quantize the first N decoder layers as an N-layer model (a quick prefix run).
    ranks: the process group (default ``distributed.from_env()``: torchrun's, or one process).
    Returns timings and sizes: decoder_layers, salience_s, quantize_s, write_s, total_s,
    s_per_layer, weight_bits, out_dir.
    """
    t0 = time.perf_counter()
    kind = salience or ("activation" if calibration is not None else "weight")
    config = QuantConfig(bits=bits, salience=kind, **options)
    if calibration is not None:
        calibration = list(calibration)
        if not calibration:
            raise ValueError("the calibration list is empty")
    if SALIENCES[kind].needs_calibration and calibration is None:
        raise ValueError(f"salience='{kind}' needs calibration= data; use salience='weight' for a data-free run")
    if config.quantizer == "gptq" and calibration is None:
        raise ValueError("quantizer='gptq' needs calibration= data")
    if kind == "fisher" and not one_sequence_each(calibration):
        raise ValueError(SEQUENCES_NEEDED)
    ranks = ranks or from_env()
    if ranks.rank == 0:
        check_out_dir(out_dir, overwrite)
    s = _Streamer(model_dir, config, calibration, dtype, num_layers, ranks)
    need_moments = calibration is not None and (SALIENCES[kind].uses_moments or config.clip_search)
    summaries, moments = fisher_summaries(s, need_moments) if kind == "fisher" else s.summaries(need_moments)
    plan = plan_from_summaries(summaries, config, moments, regroup=default_regroup(config))
    t1 = time.perf_counter()
    writer, checksums, layers_meta = None, {}, {}
    if ranks.rank == 0:
        parent = os.path.dirname(os.path.abspath(out_dir))
        os.makedirs(parent, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=".sfmp-stream-", suffix=".safetensors", dir=parent)
        os.close(fd)
        writer = SafetensorsWriter(partial, WEIGHTS_METADATA)

    def write(key, t):
        if writer is not None:
            t = t.detach().contiguous().cpu()
            checksums[key] = tensor_digest(t)
            writer.add(key, t)

    try:
        s.quantize(plan, write, layers_meta)
        t2 = time.perf_counter()
        s.write_rest(write)
        if writer is not None:
            writer.close()
            meta = checkpoint_meta(type(s.model).__name__, config, layers_meta, dict(s.tied), checksums)
            write_checkpoint_dir(out_dir, meta, lambda path: os.replace(partial, path), s.model, tokenizer, overwrite)
    finally:
        if writer is not None:
            writer.abort()
    ranks.barrier()
    t3 = time.perf_counter()
    n_blocks = len(s.blocks)
    return {"decoder_layers": n_blocks, "salience_s": t1 - t0, "quantize_s": t2 - t1, "write_s": t3 - t2,
            "total_s": t3 - t0, "s_per_layer": (t3 - t0) / n_blocks, "weight_bits": plan.average_bits(),
            "out_dir": out_dir}

