"""Baselines (uniform, layer-wise knapsack), exact BPW accounting, regrouping inside widths."""
import itertools

import pytest
import torch

from sfmp_compile import QuantConfig, quantization_report, quantize
from sfmp_compile.budget import code_bits_for_bpw, plan_bpw
from sfmp_compile.eval.baselines import knapsack_bits, layer_errors, layerwise_plan, uniform_plan
from sfmp_compile.blocks import BlockGrid
from sfmp_compile.eval.experiments import dense_copy, interpolate
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.plan import find_linears, make_plan, regroup_orders
from sfmp_compile.salience import fisher_salience, linear_weight


def _weights(model):
    return {n: linear_weight(m).detach().float() for n, m in find_linears(model).items()}


def brute_force(errors, sizes, bits):
    names = list(errors)
    choices = sorted(next(iter(errors.values())))
    best = None
    budget = bits * sum(sizes.values())
    for combo in itertools.product(choices, repeat=len(names)):
        cost = sum(sizes[n] * b for n, b in zip(names, combo))
        if cost > budget + 1e-9:
            continue
        e = sum(errors[n][b] for n, b in zip(names, combo))
        if best is None or e < best[0] - 1e-12:
            best = (e, dict(zip(names, combo)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_is_optimal_and_within_budget(seed):
    g = torch.Generator().manual_seed(seed)
    n = 5
    sizes = {f"l{i}": int(s) for i, s in enumerate(torch.randint(1, 6, (n,), generator=g) * 96)}
    errors = {}
    for name in sizes:
        base = float(torch.rand(1, generator=g)) * 10 + 0.1
        errors[name] = {b: base * 4.0 ** (-b) * float(1 + 0.3 * torch.rand(1, generator=g)) for b in (2, 3, 4)}
    bits = 2 + float(torch.rand(1, generator=g)) * 2
    got = knapsack_bits(errors, sizes, bits)
    want_e, _ = brute_force(errors, sizes, bits)
    assert sum(sizes[k] * got[k] for k in sizes) <= bits * sum(sizes.values()) + 1e-9
    assert sum(errors[k][got[k]] for k in sizes) == pytest.approx(want_e, rel=1e-12)


def test_knapsack_meets_budget_exactly():
    # Equal layers, strictly decreasing errors: any slack buys a bit, so every reachable budget is hit.
    sizes = {f"l{i}": 4096 for i in range(8)}
    errors = {n: {b: (i + 1) * 2.0 ** (-2 * b) for b in (2, 3, 4)} for i, n in enumerate(sizes)}
    for k in range(16, 33):
        got = knapsack_bits(errors, sizes, k / 8)
        assert sum(got.values()) == k
    # SmolLM2's shapes (q/o, k/v, gate/up/down): never over budget, and the slack is too small to give
    # one more bit to any layer below the top width (otherwise the optimum would have done it).
    sizes = {"q": 576 * 576, "k": 192 * 576, "v": 192 * 576, "o": 576 * 576, "gate": 1536 * 576,
             "up": 1536 * 576, "down": 576 * 1536}
    errors = {n: {b: (i + 1) * 2.0 ** (-2 * b) for b in (2, 3, 4)} for i, n in enumerate(sizes)}
    total = sum(sizes.values())
    for bits in (2.25, 2.5, 3.0, 3.25, 3.5, 3.75, 3.9):
        got = knapsack_bits(errors, sizes, bits)
        slack = bits * total - sum(sizes[n] * got[n] for n in sizes)
        assert slack >= -1e-6
        assert all(slack < sizes[n] for n in sizes if got[n] < 4)


def test_knapsack_rejects_bad_input():
    with pytest.raises(ValueError, match="below the smallest width"):
        knapsack_bits({"a": {2: 1.0, 3: 0.5}}, {"a": 10}, 1.5)
    with pytest.raises(ValueError, match="same widths"):
        knapsack_bits({"a": {2: 1.0, 3: 0.5}, "b": {2: 1.0}}, {"a": 10, "b": 10}, 2.5)


def test_layerwise_plan_quantizes_within_budget_and_bpw_is_exact():
    model = tiny_llama()
    w = _weights(model)
    cfg = QuantConfig(group_size=32, block_rows=32)
    plan = layerwise_plan(w, {n: torch.ones(x.shape[1]) for n, x in w.items()}, 2.75, cfg)
    assert plan.average_bits() <= 2.75 + 1e-12
    assert plan.average_bits() > 2.6  # the knapsack spends the budget
    for lp in plan.layers.values():
        assert lp.bits.unique().numel() == 1  # one width per layer
        assert torch.equal(lp.row_order, torch.arange(lp.shape[0]))
    assert set(plan.timings) >= {"measure_s", "allocate_s"}
    quantize(model, plan=plan)
    rep = quantization_report(model)
    assert rep["weight_bits"] == pytest.approx(plan.average_bits())
    assert rep["bpw"] == pytest.approx(plan_bpw(plan), abs=1e-12)
    for lr in rep["layers"].values():
        assert not lr["row_reordered"] and not lr["col_reordered"]


def test_layer_errors_decrease_with_bits():
    w = _weights(tiny_llama())
    errs = layer_errors(w, {n: torch.ones(x.shape[1]) for n, x in w.items()}, (2, 3, 4), QuantConfig(group_size=32))
    for e in errs.values():
        assert e[2] > e[3] > e[4] > 0


def test_plan_bpw_matches_packed_sfmp_plan_and_bpw_targeting():
    model = tiny_llama()
    w = _weights(model)
    sal = {n: x.pow(2) * torch.rand(x.shape[1]) for n, x in w.items()}

    def make(b):
        return make_plan(w, sal, QuantConfig(bits=b, group_size=32, block_rows=32, clip_search=False))

    b, plan = code_bits_for_bpw(3.9, make, lo=1.01)
    assert plan_bpw(plan) <= 3.9 + 1e-12
    assert plan_bpw(plan) > 3.8  # close to the budget, not far under it
    quantize(model, plan=plan)
    assert quantization_report(model)["bpw"] == pytest.approx(plan_bpw(plan), abs=1e-12)


def test_uniform_plan_is_identity_and_integer():
    shapes = {"a": (40, 96), "b": (64, 64)}
    p = uniform_plan(shapes, 3, QuantConfig(group_size=32, block_rows=32))
    assert p.average_bits() == 3.0
    assert all(torch.equal(lp.col_order, torch.arange(lp.shape[1])) for lp in p.layers.values())
    with pytest.raises(ValueError, match="integer"):
        uniform_plan(shapes, 2.5)


def test_regroup_keeps_width_membership_and_makes_uniform_layers_identity():
    g = torch.Generator().manual_seed(0)
    N, K = 100, 150
    grid = BlockGrid(N, K, 32, 32)  # ragged rows and columns
    ro, co = torch.randperm(N, generator=g), torch.randperm(K, generator=g)
    bits = torch.randint(2, 4, grid.shape, generator=g).to(torch.uint8)
    r2, c2 = regroup_orders(ro, co, bits, grid)
    assert torch.equal(r2.sort().values, torch.arange(N)) and torch.equal(c2.sort().values, torch.arange(K))

    def width_of_cols(order):  # column -> its bit column (pattern) after reordering
        pat = {}
        for j in range(grid.n_groups):
            for c in order[j * 32:(j + 1) * 32].tolist():
                pat[c] = tuple(bits[:, j].tolist())
        return pat

    assert width_of_cols(co) == width_of_cols(c2)
    # Inside one pattern, columns are back in original (ascending) order.
    pats = width_of_cols(c2)
    for p in set(pats.values()):
        members = [c for c in c2.tolist() if pats[c] == p]
        assert members == sorted(members)
    # Uniform map: identity orders (no permutation stored at all).
    r3, c3 = regroup_orders(ro, co, torch.full(grid.shape, 3, dtype=torch.uint8), grid)
    assert torch.equal(r3, torch.arange(N)) and torch.equal(c3, torch.arange(K))


def test_integer_bits_plan_stores_no_permutation():
    """The reorder-at-integer-bits fix: at 3 bits every layer is uniform, so SFMP == the uniform baseline."""
    model = tiny_llama()
    calib = [torch.randint(0, 256, (1, 32)) for _ in range(2)]
    quantize(model, 3, calibration=calib, group_size=32, block_rows=32)
    rep = quantization_report(model)
    assert all(not lr["row_reordered"] and not lr["col_reordered"] for lr in rep["layers"].values())


def test_dense_copy_is_the_same_function():
    """dense_copy's nn.Linear computes what the reference op computes (gather, x·W'ᵀ, scatter)."""
    from sfmp_compile.linear import SFMPLinear
    from sfmp_compile.ops.reference import packed_args

    model = tiny_llama()
    quantize(model, 2.5, group_size=32, block_rows=32)
    packed = {n: m.packed for n, m in model.named_modules() if isinstance(m, SFMPLinear)}
    assert packed
    dense_copy(model)
    assert not any(isinstance(m, SFMPLinear) for m in model.modules())
    for n, p in packed.items():
        lin = model.get_submodule(n)
        x = torch.randn(5, p.in_features)
        torch.testing.assert_close(lin(x), torch.ops.sfmp.linear_ref(x, *packed_args(p)), rtol=1e-5, atol=1e-5)


def test_interpolate():
    pts = [(2.5, 100.0), (3.5, 50.0), (4.5, 30.0)]
    assert interpolate(pts, 3.0) == pytest.approx(75.0)
    assert interpolate(pts, 4.5) == pytest.approx(30.0)
    assert interpolate(pts, 5.0) is None
    assert interpolate([(2.0, 100.0), (3.0, 1.0)], 2.5, log=True) == pytest.approx(10.0)


@pytest.mark.parametrize("reentrant", [False, True])
def test_fisher_salience_with_gradient_checkpointing(reentrant):
    """Reentrant checkpointing used to give all-zero Fisher salience silently (frozen embeddings)."""
    model = tiny_llama()
    layers = find_linears(model)
    calib = [torch.randint(0, 256, (2, 16))]
    ref = fisher_salience(model, layers, calib)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    got = fisher_salience(model, layers, calib)
    for n in layers:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-12)
        assert got[n].abs().max() > 0
