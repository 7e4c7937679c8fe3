import os

import pytest
import torch

from sfmp_compile.eval.experiments import Bench
from sfmp_compile.eval.metrics import score
from sfmp_compile.eval.models import tiny_llama


def _bench(cache_dir=None):
    cal = [torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    ids = torch.randint(0, 256, (1, 70), generator=torch.Generator().manual_seed(9))
    return Bench(tiny_llama(), None, cal, ids, context=32, group_size=32, block_rows=32, verbose=False,
                 cache_dir=cache_dir)


def test_prepare_and_score_are_the_metrics_on_the_cached_reference():
    b = _bench().prepare()
    assert [r.shape[1] for r in b.ref_logits] == [32, 32, 6]
    other = tiny_llama(seed=1)
    assert b.score(other) == pytest.approx(score(other, b.eval_ids, 32, reference=b.model), rel=1e-9)
    assert b.fp32["ppl"] == pytest.approx(score(b.model, b.eval_ids, 32)["ppl"], rel=1e-9)


def test_activation_salience_is_weight_squared_times_input_moments():
    b = _bench().prepare()
    sal, _ = b.salience("activation")
    w = b.weights["model.layers.0.mlp.down_proj"]
    want = w.pow(2) * b.moments["model.layers.0.mlp.down_proj"][None, :]
    torch.testing.assert_close(sal["model.layers.0.mlp.down_proj"], want)


def test_compute_once_caches_on_disk_and_releases_its_lock(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"x": torch.arange(3.0)}

    first, _ = _bench(str(tmp_path))._compute_once("thing", fn)
    again, _ = _bench(str(tmp_path))._compute_once("thing", fn)  # a fresh Bench, same model and data
    assert calls == [1] and torch.equal(first["x"], again["x"])
    from filelock import FileLock
    lock = FileLock(next(str(p) for p in tmp_path.iterdir() if p.suffix == ".lock"))
    lock.acquire(timeout=0)  # nobody holds it any more
    lock.release()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_run_records_the_blocks_and_format_that_made_its_bpw():
    from sfmp_compile.format import FORMAT_VERSION
    b = _bench().prepare()
    r = b.uniform(3)
    assert (r["group_size"], r["block_rows"], r["format_version"]) == (32, 32, FORMAT_VERSION)
    assert r["method"] == "uniform" and r["weight_bits"] == 3.0 and r["ppl"] > 1 and r["kl"] >= 0
