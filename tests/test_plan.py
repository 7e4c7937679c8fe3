import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.allocation import allocate
from sfmp_compile.blocks import BlockGrid
from sfmp_compile.config import QuantConfig
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.plan import find_linears, make_plan, plan, regroup_orders
from sfmp_compile.salience import SALIENCES

SMALL = dict(block_rows=32, group_size=32)
CFG = QuantConfig(bits=2.5, salience="weight", **SMALL)


def _llama_weights():
    m = tiny_llama()
    w = {n: mod.weight.detach() for n, mod in find_linears(m).items()}
    return w, {n: x.float() ** 2 for n, x in w.items()}


def _untied_reference(weights, saliences, config, regroup):
    """make_plan before the tied planner was merged into it, spelled out from first principles."""
    blocks, orders = {}, {}
    for n, w in weights.items():
        s = saliences[n].double()
        N, K = w.shape
        ro = torch.argsort(s.sum(1), descending=True, stable=True) if config.reorder_rows else torch.arange(N)
        co = torch.argsort(s.sum(0), descending=True, stable=True) if config.reorder_cols else torch.arange(K)
        grid = BlockGrid(N, K, config.block_rows, config.group_size)
        sr = s[ro][:, co]
        sums = torch.tensor([[float(sr[r * grid.block_rows:(r + 1) * grid.block_rows, j * grid.group_size:(j + 1) * grid.group_size].sum())
                              for j in range(grid.n_groups)] for r in range(grid.n_row_blocks)], dtype=torch.float64)
        blocks[n], orders[n] = (sums, grid.weight_counts()), (ro, co)
    bits = allocate(blocks, config.bits, config.bit_choices)
    if regroup:
        orders = {n: regroup_orders(*orders[n], bits[n], BlockGrid(*weights[n].shape, config.block_rows, config.group_size))
                  for n in weights}
    return orders, bits


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_layers=st.integers(1, 4), bits=st.floats(1.5, 4.5),
       three=st.booleans(), regroup=st.booleans(), rows=st.booleans(), cols=st.booleans())
def test_without_ties_it_is_the_untied_planner(seed, n_layers, bits, three, regroup, rows, cols):
    g = torch.Generator().manual_seed(seed)
    w = {f"l{i}": torch.randn(int(torch.randint(1, 90, (1,), generator=g)), int(torch.randint(1, 90, (1,), generator=g)),
                              generator=g) for i in range(n_layers)}
    s = {n: x ** 2 + 0.01 for n, x in w.items()}  # no exact ties between blocks
    ch = (1, 3, 5) if three else None
    cfg = QuantConfig(bits=bits, bit_choices=ch, salience="weight", reorder_rows=rows, reorder_cols=cols, **SMALL)
    p = make_plan(w, s, cfg, regroup=regroup)
    orders, bit_maps = _untied_reference(w, s, cfg, regroup)
    for n in w:
        assert torch.equal(p.layers[n].row_order, orders[n][0]) and torch.equal(p.layers[n].col_order, orders[n][1])
        assert torch.equal(p.layers[n].bits, bit_maps[n])


def test_tied_layers_share_orders_and_budget_holds():
    w, s = _llama_weights()
    rows = [["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]]
    cols = [["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]]
    for regroup in (True, False):
        p = make_plan(w, s, CFG, None, rows, cols, regroup=regroup, canonical=True)
        assert torch.equal(p.layers[rows[0][0]].row_order, p.layers[rows[0][1]].row_order)
        assert all(torch.equal(p.layers[cols[0][0]].col_order, p.layers[n].col_order) for n in cols[0])
        assert abs(p.average_bits() - 2.5) < 0.02 and p.average_bits() <= 2.5
        for n, lp in p.layers.items():  # still permutations
            assert torch.equal(lp.row_order.sort().values, torch.arange(w[n].shape[0]))
            assert torch.equal(lp.col_order.sort().values, torch.arange(w[n].shape[1]))


def test_groups_of_one_or_of_unknown_layers_tie_nothing():
    w, s = _llama_weights()
    a = make_plan(w, s, CFG)
    b = make_plan(w, s, CFG, None, [["model.layers.0.mlp.gate_proj"], ["nope", "model.layers.1.mlp.up_proj"]], [["x", "y"]])
    for n in w:
        for f in ("row_order", "col_order", "bits"):
            assert torch.equal(getattr(a.layers[n], f), getattr(b.layers[n], f)), (n, f)


def test_canonical_sorts_inside_blocks_for_rtn_only():
    w, s = _llama_weights()
    plain = make_plan(w, s, CFG, regroup=False)
    canon = make_plan(w, s, CFG, regroup=False, canonical=True)
    gptq = make_plan(w, s, QuantConfig(bits=2.5, salience="weight", quantizer="gptq", **SMALL), regroup=False, canonical=True)
    for n in w:
        ro = canon.layers[n].row_order
        for chunk in ro.split(CFG.block_rows):
            assert torch.equal(chunk, chunk.sort().values)
        assert torch.equal(gptq.layers[n].row_order, plain.layers[n].row_order)
        assert torch.equal(canon.layers[n].bits, plain.layers[n].bits)  # same sets per block: same block sums


@pytest.mark.parametrize("kind", list(SALIENCES))
def test_plan_dispatches_every_registered_salience(kind):
    m = tiny_llama()
    cal = [torch.randint(0, 256, (2, 8))]
    p = plan(m, 2.5, calibration=cal, salience=kind, **SMALL)
    assert p.config.salience == kind and set(p.layers) == set(find_linears(m))
    assert p.average_bits() <= 2.5 and p.layers["model.layers.0.mlp.down_proj"].col_weight is not None
    if SALIENCES[kind].needs_calibration:
        with pytest.raises(ValueError, match="needs calibration"):
            plan(m, 2.5, salience=kind, **SMALL)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.floats(1.5, 4.5), three=st.booleans(), regroup=st.booleans(),
       n_tied=st.integers(2, 3))
def test_tied_plans_meet_the_budget_and_keep_shared_orders(seed, bits, three, regroup, n_tied):
    g = torch.Generator().manual_seed(seed)
    N, K = int(torch.randint(1, 80, (1,), generator=g)), int(torch.randint(1, 80, (1,), generator=g))
    w = {f"t{i}": torch.randn(N, K, generator=g) for i in range(n_tied)}
    w["free"] = torch.randn(K, N, generator=g)
    s = {n: x ** 2 for n, x in w.items()}
    cfg = QuantConfig(bits=bits, bit_choices=(1, 3, 5) if three else None, salience="weight", **SMALL)
    tied = [[f"t{i}" for i in range(n_tied)]]
    p = make_plan(w, s, cfg, None, tied, tied, regroup=regroup, canonical=True)
    assert p.average_bits() <= bits + 1e-9
    for n in tied[0][1:]:
        assert torch.equal(p.layers[n].row_order, p.layers["t0"].row_order)
        assert torch.equal(p.layers[n].col_order, p.layers["t0"].col_order)
    for n, lp in p.layers.items():
        assert torch.equal(lp.row_order.sort().values, torch.arange(w[n].shape[0]))
        assert torch.equal(lp.col_order.sort().values, torch.arange(w[n].shape[1]))


@pytest.mark.parametrize("salience", ["", 3, ["weight"]])
def test_a_salience_that_is_no_name_or_dict_is_one_config_error(salience):
    """issue 13's hostile run: "" raised a raw KeyError from the salience table, 3 a TypeError."""
    from sfmp_compile import plan
    from sfmp_compile.config import SFMPConfigError
    from sfmp_compile.eval.models import tiny_llama
    with pytest.raises(SFMPConfigError, match="salience must be one of"):
        plan(tiny_llama(), 3.0, salience=salience)
