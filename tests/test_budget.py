"""Memory budgets: BPW and checkpoint-size targets met as a cap, within one block, with clear errors."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from sfmp_compile import QuantConfig, SFMPConfigError, quantization_report, quantize
from sfmp_compile.blocks import BlockGrid
from sfmp_compile.budget import (MIB, Budget, float_bytes_outside, plan_bpw, plan_for_budget, plan_maker, solve,
                                 stored_bytes)
from sfmp_compile.eval.models import tiny_llama


def _layers(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    w = {f"l{i}": torch.randn(n, k, generator=g) for i, (n, k) in enumerate(shapes)}
    # Heavy-tailed saliences so the ranking is far from uniform.
    sal = {n: x.pow(2) * torch.rand(x.shape[1], generator=g).pow(4) for n, x in w.items()}
    return w, sal


def _one_block_slack(plan, widths_step: int) -> float:
    """BPW one block's width step can move (the largest block), plus the row and column permutations
    that step can bring into being in the largest layer: the "within one block" of a budget."""
    c = plan.config
    n = sum(lp.shape[0] * lp.shape[1] for lp in plan.layers.values())
    block = max(int(BlockGrid(*lp.shape, c.block_rows, c.group_size).weight_counts().max()) for lp in plan.layers.values())
    perm = max(32 * (lp.shape[0] + lp.shape[1]) for lp in plan.layers.values())
    return (block * widths_step + perm) / n


shapes = st.lists(st.tuples(st.integers(8, 80), st.sampled_from([32, 64, 96])), min_size=1, max_size=2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes=shapes, seed=st.integers(0, 2**16), frac=st.floats(0.02, 0.98), rows=st.sampled_from([8, 16, 32]))
def test_bpw_budget_is_a_cap_met_within_one_block(shapes, seed, frac, rows):
    w, sal = _layers(shapes, seed)
    make = plan_maker(w, sal, QuantConfig(group_size=32, block_rows=rows, clip_search=False))
    lo, hi = plan_bpw(make(1.000001)), plan_bpw(make(8.0))
    target = lo + frac * (hi - lo)
    bits, plan = solve(make, target)
    achieved = plan_bpw(plan)
    assert achieved <= target + 1e-12
    assert target - achieved <= _one_block_slack(plan, 1) + 1e-12, (target, achieved)
    assert plan.config.bits == pytest.approx(bits)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), frac=st.floats(0.05, 0.95))
def test_three_level_budget_is_a_cap(seed, frac):
    # Enough blocks (8 x 3 and 5 x 2) for the 3-level α1 scan to find its splits.
    w, sal = _layers([(64, 96), (40, 64)], seed)
    make = plan_maker(w, sal, QuantConfig(group_size=32, block_rows=8, clip_search=False), levels=3)
    lo, hi = plan_bpw(make(2.01)), plan_bpw(make(3.99))
    target = lo + frac * (hi - lo)
    _, plan = solve(make, target)
    assert plan_bpw(plan) <= target + 1e-12
    # Three widths: a block's step is at most two bits.
    assert target - plan_bpw(plan) <= _one_block_slack(plan, 2) + 1e-12, (target, plan_bpw(plan))


@pytest.mark.parametrize("target, needle", [(1.05, "below the least"), (12.0, "8-bit codes take")])
def test_impossible_bpw_is_one_clear_error(target, needle):
    w, sal = _layers([(64, 64)], 0)
    make = plan_maker(w, sal, QuantConfig(group_size=32, block_rows=16, clip_search=False))
    with pytest.raises(SFMPConfigError, match=needle):
        solve(make, target)


@pytest.mark.parametrize("kw", [{}, {"bpw": 3.0, "size_mb": 1.0}, {"bpw": -1.0}, {"size_mb": float("nan")}])
def test_budget_takes_exactly_one_positive_number(kw):
    with pytest.raises(SFMPConfigError):
        Budget(**kw)


def test_size_budget_counts_the_whole_checkpoint():
    model = tiny_llama()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    other = float_bytes_outside(model, names)
    n = sum(model.get_submodule(x).weight.numel() for x in names)
    target_mb = (other + n * 3.3 / 8) / MIB
    plan, info = plan_for_budget(model, Budget(size_mb=target_mb), group_size=32, block_rows=32, clip_search=False)
    assert info["other_bytes"] == other and info["n_weights"] == n
    quantize(model, plan=plan)
    achieved = stored_bytes(model)  # what save_quantized writes
    assert achieved == quantization_report(model)["quantized_bytes"] + other
    assert achieved <= target_mb * MIB
    assert target_mb * MIB - achieved <= _one_block_slack(plan, 1) * n / 8 + 1


def test_size_budget_below_the_float_part_is_refused():
    model = tiny_llama()
    with pytest.raises(SFMPConfigError, match="smaller than what stays float"):
        plan_for_budget(model, Budget(size_mb=0.01), group_size=32, block_rows=32)
