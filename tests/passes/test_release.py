import torch
from torch import nn

from sfmp_compile.backend import sfmp_backend
from sfmp_compile.eval.models import tiny_llama
from sfmp_compile.passes.release import can_release, is_released, release, storage_bytes

from ._helpers import SMALL


def _mmap_like(p: torch.Tensor) -> nn.Parameter:
    """A parameter whose storage cannot be resized, like weights memory-mapped from safetensors."""
    buf = bytearray(p.detach().numpy().tobytes())
    t = nn.Parameter(torch.frombuffer(buf, dtype=p.dtype).view(p.shape))
    t._keepalive = buf
    return t


def test_release_keeps_what_dynamo_guards_on():
    for p in (nn.Parameter(torch.randn(8, 4)), _mmap_like(torch.randn(8, 4))):
        meta = (p.shape, p.stride(), p.dtype, p.device, p.requires_grad, id(p))
        assert can_release(p) is None
        assert release([p]) == 8 * 4 * 4
        assert is_released(p) and storage_bytes([p]) == 0
        assert (p.shape, p.stride(), p.dtype, p.device, p.requires_grad, id(p)) == meta
        assert can_release(p) == "already released" and release([p]) == 0


def test_shared_storage_is_not_released():
    base = torch.randn(16, 4)
    view = nn.Parameter(base[:8])
    assert "shared" in can_release(view)
    assert release([view]) == 0 and not is_released(view)


def test_release_with_memory_mapped_weights_then_recompile():
    m = tiny_llama()
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            mod.weight = _mmap_like(mod.weight)
    be = sfmp_backend(bits=2.5, inner="aot_eager", release_weights=True, cpu_kernel="reference", **SMALL)
    torch._dynamo.reset()
    cm = torch.compile(m, backend=be)
    with torch.no_grad():
        cm(torch.randint(0, 256, (1, 8)))
        assert is_released(m.model.layers[0].mlp.up_proj.weight)
        assert not is_released(m.lm_head.weight)  # skipped layers keep their weights
        cm(torch.randint(0, 256, (1, 12)))  # recompiles from the cache, no float values needed
    assert len(be.reports) == 2 and be.quantize_calls == 14
    torch._dynamo.reset()
