"""A lean compiled decode step for Hugging Face causal LMs, the way gpt-fast does it.

What a plain ``torch.compile(model)`` decode pays besides the weights: a DynamicCache that grows
(new shapes, copies), Dynamo's guard check over every module attribute on each call, and Python
around the graph. Here the KV cache is a ``StaticCache`` of fixed length written in place, the
whole step (embedding, layers, head) is one ``fullgraph`` graph per input length, the position is a
tensor (so a new position is no recompile), and guards on module attributes are dropped
(``torch.compiler.skip_guard_on_all_nn_modules_unsafe``: the model must not be changed between
steps, which is what a decode loop does anyway). One-token steps attend through
:func:`gqa_decode_attention`: on CPU the ``sfmp::decode_attention_cpu`` kernel, which reads only
the filled (attended) cache slots, elsewhere SDPA on the KV heads instead of expanding the cache.
Only the last position's logits are computed (``logits_to_keep=1``), as HF generate and llama.cpp
do in prefill.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..ops import attention_cpu


ATTENTION = "sfmp_gqa_decode"  # the name StaticDecoder registers its attention function under


def gqa_decode_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         **kwargs):
    """A transformers attention function: one-token steps on CPU run ``sfmp::decode_attention_cpu``
    (only the attended cache slots are read), other one-token steps with grouped KV heads run SDPA
    on the KV heads, everything else is transformers' own SDPA path.

    query fp [B, H, 1, D], key/value [B, KVH, L, D] (the whole static cache), attention_mask
    [B, 1, 1, >= L] or None; returns ([B, 1, H, D], None) like every transformers attention function.
    ``sfmp_decode_kernel=False`` (a keyword the model call passes through) keeps SDPA on CPU too.
    Why the kernel: SDPA scores every slot of a static cache and only then masks the empty ones
    (a 264-slot cache holding 64 tokens costs 264 per layer per token); the kernel looks at the
    mask first. Why SDPA on the KV heads: under torch.compile transformers expands a grouped cache
    to all H heads (``repeat_kv``) on every step, which for a static cache copies the whole cache
    per layer per token (41 MB per SmolLM2 step at a 300-slot cache). Query heads h·rep .. h·rep +
    rep - 1 share KV head h, so the H query rows of one token are rep queries on each KVH head.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    use_kernel = kwargs.pop("sfmp_decode_kernel", True)
    B, H, T, D = query.shape
    kvh, L = key.shape[1], key.shape[2]
    if (T != 1 or H % kvh or dropout or kwargs.get("position_bias") is not None
            or kwargs.get("cache") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if use_kernel and query.device.type == "cpu" and not query.requires_grad and attention_cpu.available():
        out = attention_cpu.decode_attention(query, key, value, attention_mask, scaling)
        return out.transpose(1, 2), None  # [B, 1, H, D]: T = 1, so already contiguous
    if kvh == H:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    mask = attention_mask[:, :, :, :L] if attention_mask is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(query.reshape(B, kvh, H // kvh, D), key, value,
                                                           attn_mask=mask, scale=scaling)
    return out.reshape(B, H, 1, D).transpose(1, 2).contiguous(), None


def _use_gqa_decode_attention(model: nn.Module) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(ATTENTION, gqa_decode_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # unregistered names get no mask at all
    if getattr(model.config, "_attn_implementation", None) in ("sdpa", None):
        model.set_attn_implementation(ATTENTION)


# Inductor's generated Python wrapper checks the size and stride of every graph input and of every
# extern kernel's output on each call: a compiled SmolLM2 step has ~1850 inputs (the quantized
# layers' tensors are inputs) and 211 extern calls. A static-shape decode loop over a model that
# does not change between steps (what skip_module_guards already assumes) never trips them.
LEAN_INDUCTOR = {"size_asserts": False, "scalar_asserts": False, "alignment_asserts": False}


def lean_inductor_config(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Inductor settings StaticDecoder compiles under: :data:`LEAN_INDUCTOR` updated by ``extra``
    (any ``torch._inductor.config`` names, e.g. ``{"cpp_wrapper": True}``); unknown names raise."""
    import torch._inductor.config
    out = {**LEAN_INDUCTOR, **(extra or {})}
    known = torch._inductor.config.get_config_copy()
    bad = sorted(k for k in out if k not in known)
    if bad:
        raise ValueError(f"unknown torch._inductor.config names {bad}")
    return out


def _with_inductor_config(backend: Callable, config: Mapping[str, Any]) -> Callable:
    """``backend`` run under ``torch._inductor.config.patch(config)``: a custom backend (e.g.
    sfmp_backend, whose inner compiler is Inductor) never sees torch.compile's ``options``."""
    def compile_under(gm, example_inputs):
        with torch._inductor.config.patch(dict(config)):
            return backend(gm, example_inputs)
    return compile_under


class StaticDecoder:
    """Prefill and single-token decode of ``model`` through one compiled graph per input length.

    model: a transformers causal LM (eval mode). max_len: KV-cache length (prompt + new tokens).
    backend: a ``torch.compile`` backend (e.g. ``sfmp_backend(bits=3)``), default Inductor.
    inductor_config: ``torch._inductor.config`` settings for the graphs' Inductor compile, on top of
    :data:`LEAN_INDUCTOR` (no per-call size/stride asserts); applied to "inductor" and to a callable
    backend (which compiles under them), ignored by other named backends. E.g. ``{"cpp_wrapper": True}``.
    A model on transformers' SDPA attention is switched to :func:`gqa_decode_attention` (same
    results; its one-token steps skip the cache expansion, and on CPU the empty cache slots).
    decode_kernel=False keeps SDPA for one-token steps on CPU (comparisons).
    """

    def __init__(self, model: nn.Module, max_len: int, backend: str | Callable = "inductor",
                 skip_module_guards: bool = True, decode_kernel: bool = True,
                 inductor_config: Mapping[str, Any] | None = None):
        from transformers import StaticCache
        if max_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.model, self.max_len, self.decode_kernel = model, max_len, decode_kernel
        _use_gqa_decode_attention(model)
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        # Allocated now, not lazily inside the first graph: that graph would guard on "not yet
        # allocated" and a reset would cost one recompile.
        cfg = model.config.get_text_config(decoder=True)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        p = next(model.parameters())
        with torch.inference_mode():
            self.cache.early_initialization(1, kv_heads, head_dim, p.dtype, p.device)
        opts = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe} if skip_module_guards else {}
        self.inductor_config = lean_inductor_config(inductor_config)
        if backend == "inductor":
            opts.update(self.inductor_config)
        elif self.inductor_config and callable(backend):
            backend = _with_inductor_config(backend, self.inductor_config)
        self._step = torch.compile(self._forward, backend=backend, fullgraph=True, dynamic=False, options=opts or None)
        self.pos = 0

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # logits_to_keep=1: the head runs on the last position only (a 256-token prefill would
        # otherwise compute 256 rows of the 49152 x 576 SmolLM2 head to keep one)
        out = self.model(ids, past_key_values=self.cache, cache_position=positions, use_cache=True,
                         logits_to_keep=1, sfmp_decode_kernel=self.decode_kernel)
        return out.logits[:, -1]

    def reset(self) -> None:
        """Forget the cached tokens (the cache tensors are zeroed in place, no new graph)."""
        with torch.inference_mode():  # the cache tensors were made inside inference mode
            self.cache.reset()
        self.pos = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` (int64 [1, T]) after what is cached; returns the last position's logits [1, vocab]."""
        t = ids.shape[-1]
        if self.pos + t > self.max_len:
            raise ValueError(f"{self.pos + t} tokens exceed the cache length {self.max_len}")
        with torch.inference_mode():  # fresh inference tensors of standard strides: nothing for guards to tell apart
            positions = torch.arange(self.pos, self.pos + t, device=ids.device)
            logits = self._step(ids.clone(memory_format=torch.contiguous_format), positions)
        self.pos += t
        return logits

    def truncate(self, pos: int) -> None:
        """Continue as if only the first ``pos`` tokens had been fed (their cache entries stay valid;
        later ones are overwritten by the next call, and masked by position until then)."""
        if not 0 <= pos <= self.pos:
            raise ValueError(f"cannot truncate to {pos} of {self.pos} cached tokens")
        with torch.inference_mode():
            for layer in self.cache.layers:  # each layer writes at its own counter, not at cache_position
                if getattr(layer, "is_initialized", False):
                    layer.cumulative_length.fill_(pos)
        self.pos = pos

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of ``ids`` (int64 [1, T]): returns int64 [1, T + max_new_tokens]."""
        self.reset()
        logits = self(ids)
        out = [ids]
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1, keepdim=True)
            out.append(nxt)
            logits = self(nxt)
        return torch.cat(out, dim=1)
