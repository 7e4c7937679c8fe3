"""tp: tensor-parallel shards. Orders stay inside shards, shapes that do not split are refused,
tp_shards=1 is the plan earlier builds made, and per-rank bytes add up to the stored layer."""
import hashlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.blocks import BlockGrid
from sfmp_compile.config import QuantConfig, SFMPConfigError
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.permcodec import decode, encode, stored_breakdown
from sfmp_compile.plan import find_linears, make_plan, plan
from sfmp_compile.quantize import quantize_weight
from sfmp_compile.format import validate
from sfmp_compile.tp import axis_shards, check_heads, check_split, maps_shards, rank_bytes, split_axis
from sfmp_compile.tp_slice import rank_slice

COL_PAR, ROW_PAR = ("q_proj", "k_proj", "gate_proj", "up_proj"), ("o_proj", "down_proj")


def test_split_axis_by_name():
    assert [split_axis(f"model.layers.0.self_attn.{n}") for n in COL_PAR + ROW_PAR] == [0, 0, 0, 0, 1, 1]
    assert split_axis("transformer.h.0.attn.c_attn") == 0 and split_axis("transformer.h.0.mlp.c_proj") == 1
    assert axis_shards("a.down_proj", 4) == (1, 4) and axis_shards("a.up_proj", 4) == (4, 1)


@st.composite
def split_layers(draw):
    """(weights, saliences, row_groups, config kwargs): layers whose split axis divides into S shards,
    each shard whole blocks (per = a multiple of the block) or inside one block (per divides it)."""
    S = draw(st.sampled_from([1, 2, 3, 4]))
    br, gs = draw(st.sampled_from([8, 16])), draw(st.sampled_from([32, 64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))

    def split(unit):
        per = draw(st.one_of(st.integers(1, 3).map(lambda a: a * unit), st.sampled_from([d for d in (1, 2, 4, 8) if unit % d == 0])))
        return S * per

    w, names = {}, draw(st.lists(st.sampled_from(COL_PAR + ROW_PAR), min_size=1, max_size=4, unique=True))
    for n in names:
        free = int(torch.randint(1, 3 * gs, (1,), generator=g))
        shape = (split(br), free) if split_axis(n) == 0 else (int(torch.randint(1, 4 * br, (1,), generator=g)), split(gs))
        w[f"l.{n}"] = torch.randn(*shape, generator=g)
    if "l.gate_proj" in w and "l.up_proj" in w:  # tied rows need one N
        w["l.up_proj"] = torch.randn(w["l.gate_proj"].shape, generator=g)
    s = {n: x ** 2 + 0.01 * torch.rand(x.shape, generator=g) for n, x in w.items()}
    rows = [["l.gate_proj", "l.up_proj"]]
    return w, s, rows, dict(tp_shards=S, block_rows=br, group_size=gs)


@settings(max_examples=60, deadline=None)
@given(layers=split_layers(), bits=st.floats(2.1, 3.9), three=st.booleans(), quantizer=st.sampled_from(["rtn", "gptq"]),
       regroup=st.booleans())
def test_every_order_maps_each_shard_onto_itself(layers, bits, three, quantizer, regroup):
    w, s, rows, kw = layers
    S = kw["tp_shards"]
    cfg = QuantConfig(bits=bits, bit_choices=(2, 3, 4) if three else None, salience="weight", quantizer=quantizer, **kw)
    p = make_plan(w, s, cfg, row_groups=rows, regroup=regroup)
    assert p.average_bits() <= bits + 1e-9
    for n, lp in p.layers.items():
        axis = split_axis(n)
        order = (lp.row_order, lp.col_order)[axis]
        assert torch.equal(order.sort().values, torch.arange(order.numel()))
        assert maps_shards(order, S), (n, S, order)
        if not regroup and n not in rows[0]:  # inside each shard: the paper's descending salience rule
            sums = s[n].double().sum(1 - axis)
            per = order.numel() // S
            for k in range(S):
                v = sums[order[k * per:(k + 1) * per]]
                assert bool((v[:-1] >= v[1:]).all())


@settings(max_examples=30, deadline=None)
@given(layers=split_layers(), bits=st.floats(2.1, 3.9))
def test_restricted_orders_still_encode_compactly(layers, bits):
    """Regrouping inside shards leaves every slot's indices ascending, so format v2's `slot` (or
    `pattern`) code describes the order: a few bits per row, no stored permutation."""
    w, s, rows, kw = layers
    p = make_plan(w, s, QuantConfig(bits=bits, salience="weight", **kw), row_groups=rows)
    for n, lp in p.layers.items():
        grid = BlockGrid(*lp.shape, kw["block_rows"], kw["group_size"])
        for axis, order in enumerate((lp.row_order, lp.col_order)):
            code = encode(order, grid, lp.bits, axis)
            assert code.numel() == 0 or int(code[0]) in (1, 2)
            back = decode(code, grid, lp.bits, axis, "test", "perm")
            assert torch.equal(back.to(torch.int64), order) or (back.numel() == 0 and torch.equal(order, torch.arange(order.numel())))


def _plan_digest(intermediate: int = 160, **kw) -> str:
    """A hash of every order and bit map make_plan gives for a tiny Llama with ties, 2- and 3-level,
    regrouped or not, RTN and GPTQ: the digest below was made by the build before tp_shards existed."""
    w = {n: m.weight.detach() for n, m in find_linears(tiny_llama(seed=3, intermediate=intermediate)).items()}
    s = {n: x.float() ** 2 for n, x in w.items()}
    rows = [[f"model.layers.{i}.mlp.gate_proj", f"model.layers.{i}.mlp.up_proj"] for i in range(2)]
    cols = [[f"model.layers.{i}.self_attn.{p}_proj" for p in "qkv"] for i in range(2)] + rows
    h = hashlib.sha256()
    for bits, ch in ((2.5, None), (3.3, (2, 3, 4))):
        for regroup in (True, False):
            for q in ("rtn", "gptq"):
                cfg = QuantConfig(bits=bits, bit_choices=ch, salience="weight", quantizer=q, block_rows=32, group_size=32, **kw)
                p = make_plan(w, s, cfg, row_groups=rows, col_groups=cols, regroup=regroup, canonical=True)
                for n, lp in p.layers.items():
                    for t in (lp.row_order, lp.col_order, lp.bits):
                        h.update(n.encode())
                        h.update(t.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def test_one_shard_is_the_plan_of_earlier_builds():
    assert _plan_digest(tp_shards=1) == "95a611001c26515832020279746546f2fe48cab04add2d807caa7e8d0b51a628"
    assert _plan_digest(128, tp_shards=2) != _plan_digest(128, tp_shards=1)  # the restriction does bind here


def test_config_field_and_its_dict():
    assert "tp_shards" not in QuantConfig().to_dict()  # a default checkpoint's sfmp.json is unchanged
    c = QuantConfig(tp_shards=4)
    assert QuantConfig.from_dict(c.to_dict()) == c
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(SFMPConfigError, match="tp_shards"):
            QuantConfig(tp_shards=bad)


def test_shapes_that_do_not_split_are_refused():
    # SmolLM2's o_proj: 576 input columns / 4 = 144, not whole groups of 64 and not inside one.
    with pytest.raises(SFMPConfigError, match=r"o_proj .*row-parallel.* shards of 144 input columns.*group_size=64"):
        check_split("m.o_proj", BlockGrid(576, 576, 512, 64), 1, 4)
    with pytest.raises(SFMPConfigError, match=r"k_proj .*190 rows.*4 equal shards"):
        check_split("m.k_proj", BlockGrid(190, 64, 16, 32), 0, 4)
    check_split("m.o_proj", BlockGrid(576, 576, 512, 64), 1, 3)  # 192 = 3 groups
    check_split("m.k_proj", BlockGrid(128, 64, 512, 32), 0, 8)  # 16 rows per rank inside one row-block
    w = {"m.o_proj": torch.randn(8, 576)}
    with pytest.raises(SFMPConfigError, match="o_proj"):
        make_plan(w, {"m.o_proj": w["m.o_proj"] ** 2}, QuantConfig(salience="weight", group_size=64, tp_shards=4))


@pytest.mark.parametrize("S", [1, 2, 4])
def test_rank_bytes_add_up_to_the_stored_codes_scales_and_zeros(S):
    m = tiny_llama()
    w = {n: mod.weight.detach() for n, mod in find_linears(m).items()}
    cfg = QuantConfig(bits=2.6, salience="weight", block_rows=8, group_size=32, tp_shards=S)
    p = make_plan(w, {n: x ** 2 for n, x in w.items()}, cfg)
    for n, lp in p.layers.items():
        packed = quantize_weight(w[n], lp, cfg, name=n)
        bd = stored_breakdown(packed)
        axis = split_axis(n)
        per_rank = rank_bytes(lp.bits, packed.grid, axis, S)
        assert len(per_rank) == S
        per, size = lp.shape[axis] // S, (cfg.block_rows, cfg.group_size)[axis]
        if per % size == 0:  # every rank holds whole blocks: nothing is duplicated
            assert sum(per_rank) * 8 == bd["codes"] + bd["scales_zeros"]
        else:  # S=4 splits o_proj's 64 columns inside one group: padding and scales are paid per rank
            assert sum(per_rank) * 8 > bd["codes"] + bd["scales_zeros"]


def test_rank_bytes_of_a_shard_inside_one_group_pays_its_padding_and_scales():
    grid = BlockGrid(4, 64, 4, 64)  # one group of 64 columns, 4 ranks of 16 columns each
    bits = torch.full((1, 1), 3, dtype=torch.uint8)
    # each rank: 4 rows x 16 columns padded to 32, 3 bits -> 48 bytes; 4 (row, group) scale+zero pairs -> 16 bytes
    assert rank_bytes(bits, grid, 1, 4) == [64] * 4


def test_head_counts_a_server_cannot_split_are_refused_before_planning():
    m = tiny_llama()  # 4 query heads, 2 KV heads
    with pytest.raises(SFMPConfigError, match="4 attention heads and 2 KV heads"):
        plan(m, 2.5, tp_shards=3)
    check_heads(m.config, 4)  # KV heads replicated 2x, as vLLM does
    p = plan(m, 2.5, tp_shards=2, block_rows=16, group_size=32)
    assert all(maps_shards((lp.row_order, lp.col_order)[split_axis(n)], 2) for n, lp in p.layers.items())
    check_heads(object(), 7)  # no head counts: nothing to check


@settings(max_examples=25, deadline=None)
@given(layers=split_layers(), bits=st.floats(2.1, 3.9), regroup=st.booleans())
def test_each_rank_slice_is_a_packed_weight_of_its_own(layers, bits, regroup):
    """What a TP loader would hold per rank: a valid layer whose weight is exactly its slice of the
    full layer's (original coordinates), and whose codes + scales are what rank_bytes counted."""
    w, s, rows, kw = layers
    S = kw["tp_shards"]
    cfg = QuantConfig(bits=bits, salience="weight", quantizer="rtn", **kw)
    p = make_plan(w, s, cfg, row_groups=rows, regroup=regroup)  # regroup=False: the salience sort kept (GPTQ's)
    for n, lp in p.layers.items():
        packed = quantize_weight(w[n], lp, cfg, name=n)
        full = packed.dequantize()
        axis, per = split_axis(n), lp.shape[split_axis(n)] // S
        counted = rank_bytes(lp.bits, packed.grid, axis, S)
        for k in range(S):
            part = rank_slice(packed, axis, S, k)
            validate(part, n)
            want = full[k * per:(k + 1) * per] if axis == 0 else full[:, k * per:(k + 1) * per]
            assert torch.equal(part.dequantize(), want)
            bd = stored_breakdown(part)
            assert bd["codes"] + bd["scales_zeros"] == 8 * counted[k]


def test_rank_slice_refuses_an_order_that_leaves_its_shard():
    w = {"l.q_proj": torch.randn(32, 32)}
    cfg = QuantConfig(bits=2.5, salience="weight", block_rows=8, group_size=32)
    p = make_plan(w, {"l.q_proj": torch.rand(32, 32)}, cfg, regroup=False)  # tp_shards=1: rows move freely
    packed = quantize_weight(w["l.q_proj"], p.layers["l.q_proj"], cfg)
    with pytest.raises(ValueError, match="out of shard"):
        rank_slice(packed, 0, 2, 0)
