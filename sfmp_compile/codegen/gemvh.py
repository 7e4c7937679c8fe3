"""GEMVH family (M == 1, opt-in): gemvu's walk with fp16x2 field arithmetic.

An alternative body for the gemv bucket, chosen by configuration (a tile ``Config`` with
``family="gemvh"``), never by default until a GPU run shows it wins. It shares everything with
gemvu (the [U, words, rows] tile loads, 128-bit loads under ALIGNED, the PIPE double buffer,
split-K partials by plain stores, the launcher) except the multiply of one 32-column chunk:

* gemvu spends 3 fp32 instructions per field (LOP3 + FADD + FFMA, templates.field_products);
* gemvh handles the two 16-bit halves of a plane word as one f16x2 pair. Pair j of a width-w word
  holds field j (bit j*w) and field j + 16/w (bit 16 + j*w) -- the same row, two columns. One
  LOP3 ``(word & mask*0x10001) | 0x64006400`` drops both fields into the mantissas of fp16 1024,
  one HFMA2 ``m * 2^-p - 2^(10-p)`` gives both plane codes exactly (p = the field's bit inside its
  half, p + w <= 10; fields above that are read from ``word >> 8``, one SHF per word), one HFMA2
  accumulates ``q * x`` for both columns: 1.5 instructions per field. Only fp16 arithmetic, so
  activations must be fp16 (``launch`` runs gemvu for any other dtype).

Numerics (own tolerance, tests/codegen/test_gemvh.py): the codes are exact; each product q*x and each
partial sum rounds to fp16, so the fp16 partial sums are flushed to fp32 after every word (at most
16/w terms per half, 16 for a 1-bit plane); the plane shift 2^shift, the scale and the zero point
are applied in fp32 as in gemvu. Error <= (16/w + 1) * 2^-11 * sum_k |s * q * x_k| per output (fp32
terms aside). Range: a word half's fp16 partial sum is at most (16/w) * (2^w - 1) * max|x| (1-bit:
16|x|, 2-bit: 24|x|, 4-bit: 60|x|, 8-bit: 510|x|), which overflows fp16 (65504) once max|x| passes
~2700 for 1..2-bit planes, ~1000 for 4-bit and ~128 for 8-bit planes -- the reason it stays opt-in
(docs/KERNELS.md, gemvh).
"""
from __future__ import annotations

import math

import torch

from ..format import plane_widths
from . import gemvu
from .gemv import PROLOGUE
from .templates import TILE_SETUP, split_tree
from .tiles import Config

FAMILY = "gemvh"
SERVES = ("gemv",)
ALL_WIDTHS = False  # gemvu's walk: its all-widths kernel compiles too slowly (gemvu.ALL_WIDTHS)
VERSION = "1.0"
SIGNATURE_EXTRA = gemvu.SIGNATURE_EXTRA
INTERPRETER = gemvu.INTERPRETER.with_(family=FAMILY)
FALLBACK = gemvu.FALLBACK.with_(family=FAMILY)
block_m, grid = gemvu.block_m, gemvu.grid

_MAGIC_H2 = 0x64006400  # fp16 1024.0 in both halves


def pair_fields(w: int) -> list[tuple[int, bool, int]]:
    """For the 16/w field pairs of a width-w plane word: (j, from word >> 8, p), p = the bit of
    field j (and of field j + 16/w in the high half) in the word it is read from; p + w <= 10, so
    1024 + q * 2^p is an exact fp16."""
    out = []
    for j in range(16 // w):
        p = j * w
        shifted = p + w > 10
        out.append((j, shifted, p - 8 if shifted else p))
    return out


def _h2(v: float) -> int:
    """Bits of the f16x2 pair (v, v) for a power of two v = +-2^e (exact fp16)."""
    m, e = math.frexp(abs(v))  # abs(v) = 0.5 * 2^e
    assert m == 0.5 and -14 <= e - 1 <= 15, v
    h = (0x8000 if v < 0 else 0) | ((e - 1 + 15) << 10)
    return h | (h << 16)


def pair_asm(mask: int, p: int) -> str:
    """PTX of one field pair: $0 = fma(fma(lop3($1 & mask | 1024x2), 2^-p, -2^(10-p)), $2, $3)
    -- one LOP3 and two HFMA2; $2 is the packed x pair (integer ops on the [U, w] leaves in the kernel body,
    once per column pair for all of a thread's rows: ptxas did not merge a pack written in here)."""
    return ("{ .reg .b32 t, c1, c2; "
            f"lop3.b32 t, $1, {mask:#x}, {_MAGIC_H2:#x}, 0xea; "  # (a & b) | c
            f"mov.b32 c1, {_h2(2.0 ** -p):#x}; mov.b32 c2, {_h2(-(2.0 ** (10 - p))):#x}; "
            "fma.rn.f16x2 t, t, c1, c2; fma.rn.f16x2 $0, t, $2, $3; }")


# the f16x2 word sum as fp32: both halves converted and added
FLUSH_ASM = ("{ .reg .b16 l, h; .reg .f32 a, b; mov.b32 {l, h}, $1; cvt.f32.f16 a, l; cvt.f32.f16 b, h; "
             "add.f32 $0, a, b; }")


def gemvh_chunk_compute(bits: int, t: int, sfx: str, ind: str) -> list[str]:
    """Multiply chunk t (gemvu's _v4_chunk_compute contract: activations x{t}, words wd{w}_{t} as
    [UB, w, BLOCK_N], row sums into ``rs``, activation sums into ``xs``) with f16x2 pairs: per pair
    one LOP3 + two HFMA2 (``pair_asm``, inline PTX), the word's fp16 sums flushed to fp32 with the
    plane shift 2^shift. Under the interpreter (DOT_KIND 0), which runs no PTX, its pure-Triton twin:
    the same pairs as ``tl.join`` [.., 2] fp16 tensors, the same roundings but for the fused FMAs."""
    UB = gemvu._v4_u(bits)
    guard = [f"{ind}if BLOCK_K > {32 * t}:"] if t else []
    i2 = ind + "    " if t else ind
    i3 = i2 + "    "
    body = [f"{i2}xh = x{t}{sfx}.to(tl.float16)",
            f"{i2}xs += tl.sum(xh.to(tl.float32), axis=1)"]
    shift = 0
    for w in plane_widths(bits):
        per, half = 32 // w, 16 // w
        body.append(f"{i2}wd = wd{w}_{t}{sfx}")
        fields = pair_fields(w)
        if any(s for _, s, _ in fields):
            body.append(f"{i2}wd8 = wd >> 8")
        # x leaves [UB, w] of the word's 32/w columns; pair j = (column j, column j + 16/w)
        tree, leaves = split_tree(f"tl.reshape(xh, ({UB}, {w}, {per}))", f"{UB}, {w}", per, f"xh{w}_", i2)
        body += tree
        scale = f" * {float(1 << shift)!r}" if shift else ""
        twin, ptx = [], [f"{i3}h = tl.zeros(({UB}, {w}, BLOCK_N), dtype=tl.int32)  # f16x2 bits"]
        for j, shifted, p in fields:
            mask = (((1 << w) - 1) << p) * 0x10001
            src = "wd8" if shifted else "wd"
            twin += [
                f"{i3}m = ({src} & {mask}) | {_MAGIC_H2}",
                f"{i3}q = tl.join(m.to(tl.int16), (m >> 16).to(tl.int16)).to(tl.float16, bitcast=True)"
                f" * {2.0 ** -p!r} - {2.0 ** (10 - p)!r}  # both plane codes, exact",
                f"{i3}xp = tl.join({leaves[j]}, {leaves[j + half]})[:, :, None, :]",
                f"{i3}{'h = ' if j == 0 else 'h += '}q * xp",
            ]
            ptx += [
                f"{i3}xp = ({leaves[j]}.to(tl.int16, bitcast=True).to(tl.int32) & 65535)"
                f" | ({leaves[j + half]}.to(tl.int16, bitcast=True).to(tl.int32) << 16)",
                f"{i3}xp = tl.broadcast_to(xp[:, :, None], ({UB}, {w}, BLOCK_N))",
                f"{i3}h = tl.inline_asm_elementwise({pair_asm(mask, p)!r}, '=r,r,r,r', [{src}, xp, h],"
                f" dtype=tl.int32, is_pure=True, pack=1)",
            ]
        twin.append(f"{i3}rs += tl.sum(tl.sum(h.to(tl.float32), axis=3), axis=1){scale}  # fp16 word sums -> fp32")
        ptx.append(f"{i3}rs += tl.sum(tl.inline_asm_elementwise({FLUSH_ASM!r}, '=f,r', [h], dtype=tl.float32,"
                   f" is_pure=True, pack=1), axis=1){scale}  # fp16 word sums -> fp32")
        body += [f"{i2}if DOT_KIND == 0:"] + twin + [f"{i2}else:"] + ptx
        shift += w
    return guard + body


def emit_body(widths: tuple[int, ...]) -> str:
    return "".join([
        PROLOGUE.strip("\n") + "\n", TILE_SETUP.strip("\n") + "\n",
        "    x_row = x_ptr + pid_m * stride_xm\n",
        "    acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)  # row sums (and zero-point terms)\n",
        gemvu.gemv_v4_body(widths, gemvh_chunk_compute),
        gemvu.STORE_V4.strip("\n") + "\n",
    ])


def config_space(M: int, n_tiles_for, groups: int, block_rows: int, group_size: int,
                 has_col_perm: bool = True) -> list[Config]:
    """gemvu's configs (same tiles, same registers budget) under this family's name."""
    return [c.with_(family=FAMILY) for c in gemvu.config_space(M, n_tiles_for, groups, block_rows, group_size,
                                                               has_col_perm)]


def launch(L, cfg: Config) -> torch.Tensor:
    """gemvu's host side with this body; activations other than fp16 run gemvu's body (fp16x2
    arithmetic would change their range and precision)."""
    if L.x.dtype != torch.float16:
        return gemvu.launch(L, cfg)
    return gemvu.launch(L, cfg, FAMILY)
