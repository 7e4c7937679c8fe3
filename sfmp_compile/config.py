"""User-facing quantization options, validated once so every later step can trust them."""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

# The salience names: the keys of salience.SALIENCES, which fills this list when it is imported (the
# package __init__ imports it before any user code runs). config is above salience in data-flow
# order, so it holds the names and not the table.
SALIENCE_KINDS: list[str] = []
QUANTIZERS = ("rtn", "gptq")
RANKS = ("per_weight", "sum")  # the block orders allocation.rank_key knows
MIN_BITS, MAX_BITS = 1, 8
# Larger blocks only pad: a block wider than a layer acts as the whole layer, but the quantizers
# allocate [rows, groups * group_size] (and row-blocks likewise), so 2**31 allocated hundreds of GB
# before anything said no (issue 13's hostile run). These caps are far above any real layer.
MAX_GROUP_SIZE, MAX_BLOCK_ROWS = 1 << 17, 1 << 20


class SFMPConfigError(ValueError):
    """A quantization option is out of range or inconsistent."""


def _skip_bits(v) -> tuple[tuple[str, int], ...]:
    """``skip_bits`` as (pattern, bits) pairs: from a mapping {pattern: bits}, pairs, or None / {} (float)."""
    if v is None:
        return ()
    try:
        pairs = tuple(v.items()) if isinstance(v, dict) else tuple(tuple(p) for p in v)
    except TypeError:
        raise SFMPConfigError(f"skip_bits must map layer patterns to bits, e.g. {{'lm_head': 8}}, got {v!r}") from None
    for p in pairs:
        if len(p) != 2 or not isinstance(p[0], str) or isinstance(p[1], bool) or not isinstance(p[1], int) \
                or not 2 <= p[1] <= MAX_BITS:
            raise SFMPConfigError(f"skip_bits entries are pattern: bits with bits an integer in 2..{MAX_BITS} "
                                  f"(leave a pattern out to keep it float), got {p!r}")
    return pairs


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides how a model is quantized.

    bits: target average *code* bits per quantized weight, 1 < bits <= 8 (e.g. 2.75).
    bit_choices: None for the 2-level scheme (floor/ceil of ``bits``), or a sorted tuple of three
        widths such as (2, 3, 4) for the paper's 3-level scheme.
    block_rows: output rows per block (m_b). group_size: input columns per block and per
        scale/zero group (n_b); a multiple of 32 so every bit-plane row fills whole int32 words.
    skip: layer-name patterns left out of SFMP's budget. skip_bits: {pattern: bits} for skipped
        layers that are still quantized, uniformly and without reordering (default: lm_head, and an
        embedding tied to it, at 8 bits); ``skip_bits={}`` keeps every skipped layer float. Applied by
        the compile backend; ``quantize()`` (the checkpoint path) still keeps skipped layers float.
    rank: how blocks are ranked for the widths: "per_weight" (salience per weight, the default) or
        "sum" (the paper's block sum; the two agree where every block is full, ``allocation``).
    tp_shards: tensor-parallel ranks the checkpoint is meant for (1: no restriction). With S > 1 the
        orders on the axis a server splits (rows of column-parallel layers, columns of row-parallel
        ones, ``tp.split_axis``) stay inside each of S equal shards, and shard boundaries must meet
        block boundaries (``tp.check_split``, checked when planning).
    """

    bits: float = 3.0
    bit_choices: tuple[int, ...] | None = None
    block_rows: int = 512
    group_size: int = 128
    salience: str = "activation"
    quantizer: str = "rtn"
    clip_search: bool = True
    reorder_rows: bool = True
    reorder_cols: bool = True
    skip: tuple[str, ...] = ("lm_head",)
    skip_bits: tuple[tuple[str, int], ...] = (("lm_head", 8),)
    gptq_damp: float = 0.01
    rank: str = "per_weight"
    tp_shards: int = 1

    def __post_init__(self):
        b = self.bits
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise SFMPConfigError(f"bits must be a number, got {b!r}")
        if not (MIN_BITS < b <= MAX_BITS):
            raise SFMPConfigError(
                f"bits={b} is out of range: the average code width must be in ({MIN_BITS}, {MAX_BITS}]"
            )
        if self.bit_choices is not None:
            ch = tuple(self.bit_choices)
            if len(ch) != 3 or any(not isinstance(c, int) or isinstance(c, bool) for c in ch):
                raise SFMPConfigError(f"bit_choices must be three integers such as (2, 3, 4), got {ch!r}")
            if list(ch) != sorted(set(ch)):
                raise SFMPConfigError(f"bit_choices must be strictly increasing, got {ch!r}")
            if ch[0] < MIN_BITS or ch[-1] > MAX_BITS:
                raise SFMPConfigError(f"bit_choices must lie in [{MIN_BITS}, {MAX_BITS}], got {ch!r}")
            if not (ch[0] <= b <= ch[-1]):
                raise SFMPConfigError(f"bits={b} cannot be reached with bit_choices {ch!r}")
            object.__setattr__(self, "bit_choices", ch)
        for name in ("block_rows", "group_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise SFMPConfigError(f"{name} must be a positive integer, got {v!r}")
            cap = MAX_GROUP_SIZE if name == "group_size" else MAX_BLOCK_ROWS
            if v > cap:
                raise SFMPConfigError(f"{name}={v} is larger than {cap} (a block wider than the layer only pads)")
        if self.group_size % 32:
            raise SFMPConfigError(f"group_size must be a multiple of 32 (packed int32 words), got {self.group_size}")
        if self.salience not in SALIENCE_KINDS:
            raise SFMPConfigError(f"salience must be one of {tuple(SALIENCE_KINDS)}, got {self.salience!r}")
        if self.quantizer not in QUANTIZERS:
            raise SFMPConfigError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        d = self.gptq_damp
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
            raise SFMPConfigError(f"gptq_damp must be a finite number >= 0 (λ = gptq_damp·mean diag H), got {d!r}")
        if self.rank not in RANKS:
            raise SFMPConfigError(f"rank must be one of {RANKS} (how blocks are ranked for their widths), got {self.rank!r}")
        t = self.tp_shards
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise SFMPConfigError(f"tp_shards must be a positive integer (tensor-parallel ranks), got {t!r}")
        skip = (self.skip,) if isinstance(self.skip, str) else self.skip
        try:
            skip = tuple(skip)
        except TypeError:
            skip = None
        if skip is None or not all(isinstance(p, str) for p in skip):
            raise SFMPConfigError(f"skip must be a layer-name pattern or a list of them, got {self.skip!r}")
        object.__setattr__(self, "skip", skip)
        object.__setattr__(self, "skip_bits", _skip_bits(self.skip_bits))

    @property
    def levels(self) -> int:
        return 2 if self.bit_choices is None else 3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bit_choices"] = list(self.bit_choices) if self.bit_choices else None
        d["skip"] = list(self.skip)
        d["skip_bits"] = dict(self.skip_bits)
        if self.tp_shards == 1:  # the default: a checkpoint's sfmp.json stays what earlier builds wrote and read
            del d["tp_shards"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        d = dict(d)
        if d.get("bit_choices") is not None:
            d["bit_choices"] = tuple(d["bit_choices"])
        if "skip" in d:
            d["skip"] = tuple(d["skip"])
        d.setdefault("rank", "sum")  # written before "rank" existed: those plans ranked by block sum
        return cls(**d)
