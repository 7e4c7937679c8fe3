import pytest

from sfmp_compile.config import QuantConfig, SFMPConfigError


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=1.0), "out of range"),
    (dict(bits=0.5), "out of range"),
    (dict(bits=8.5), "out of range"),
    (dict(bits=float("nan")), "must be a number"),
    (dict(bits="3"), "must be a number"),
    (dict(bits=3.0, bit_choices=(4, 3, 2)), "strictly increasing"),
    (dict(bits=3.0, bit_choices=(2, 3)), "three integers"),
    (dict(bits=3.0, bit_choices=(0, 3, 4)), r"lie in \[1, 8\]"),
    (dict(bits=5.0, bit_choices=(2, 3, 4)), "cannot be reached"),
    (dict(group_size=48), "multiple of 32"),
    (dict(block_rows=0), "positive integer"),
    (dict(salience="hessian"), "salience must be one of"),
    (dict(quantizer="awq"), "quantizer must be one of"),
    (dict(gptq_damp=-1.0), "gptq_damp must be a finite number"),
    (dict(gptq_damp=float("nan")), "gptq_damp must be a finite number"),
    (dict(gptq_damp=float("inf")), "gptq_damp must be a finite number"),
    (dict(gptq_damp="0.01"), "gptq_damp must be a finite number"),
    # issue 13's hostile run: these reached the quantizers (a 512 GB allocation, a raw TypeError)
    (dict(group_size=2**31), "larger than"),
    (dict(block_rows=2**31), "larger than"),
    (dict(skip=5), "skip must be a layer-name pattern"),
    (dict(rank="mean"), "rank must be one of"),
    (dict(skip=["lm_head", 3]), "skip must be a layer-name pattern"),
])
def test_bad_options_get_one_clear_error(kwargs, message):
    with pytest.raises(SFMPConfigError, match=message):
        QuantConfig(**kwargs)


def test_roundtrip_dict():
    c = QuantConfig(bits=2.75, bit_choices=(2, 3, 4), skip=("lm_head", "*.gate"))
    assert QuantConfig.from_dict(c.to_dict()) == c


def test_a_config_written_before_rank_existed_reads_as_ranked_by_sum():
    old = QuantConfig().to_dict()
    del old["rank"]
    assert QuantConfig.from_dict(old).rank == "sum" and QuantConfig().rank == "per_weight"


def test_zero_damp_is_allowed():
    assert QuantConfig(gptq_damp=0).gptq_damp == 0
