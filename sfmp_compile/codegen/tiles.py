"""Tile configurations of the generated kernels (one :class:`Config` per launch)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    p = 1
    while p < n:
        p *= 2
    return p


def tile_geometry(cfg: "Config", out_features: int, block_rows: int, group_size: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, row tiles per row-block, row tiles) a launch with ``cfg`` really uses: a
    row tile never crosses a row-block, a K chunk is at least one int32 word and at most a group."""
    bn = min(cfg.BLOCK_N, pow2_at_least(block_rows))
    bk = max(32, min(cfg.BLOCK_K, pow2_at_least(group_size)))
    tiles_per_rb = -(-min(block_rows, out_features) // bn)
    return bn, bk, tiles_per_rb, -(-out_features // block_rows) * tiles_per_rb


@dataclass(frozen=True)
class Config:
    """One tile configuration. SPLIT_K == 0 means: choose from the SM count at launch.

    family: the kernel family that runs it when not the M bucket's own (e.g. "gemvu" for an M = 1
    launch); "" = the bucket's family. The tuned and shipped tables store it, so which body serves
    a bucket is configuration, decided per GPU and shape by tuning.
    U: groups per iteration (gemvu only; ignored elsewhere).
    """

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int = 1
    num_warps: int = 4
    num_stages: int = 2
    pregather: bool = False
    U: int = 1
    family: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, default in (("U", 1), ("family", "")):
            if d[k] == default:
                del d[k]  # defaults stay out, so entries read the same as before the field existed
        return d

    def with_(self, **kw) -> "Config":
        return Config(**{**asdict(self), **kw})
