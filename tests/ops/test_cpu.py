"""sfmp::linear_cpu, the C++ mixed-width kernel: equal to the reference, AVX2 equal to portable, and
what Inductor and autograd see of it."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sfmp_compile.layouts import SFMPWeight
from sfmp_compile.ops import cpu, cpu_build
from sfmp_compile.ops.reference import linear_ref, packed_args
from tests.codegen._util import random_packed, sqnr_db

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C++ compiler for the CPU kernel")

SQNR_FLOOR_DB = 38.0  # int8 activations, per (row, group) absmax: ~42-48 dB measured on Gaussian x
RESIDUAL_FLOOR_DB = 70.0  # int8 + int8 residual ("precise"): ~15-bit activations
WIDTH_SETS = [(1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,), (2, 3, 4), (1, 2, 3, 4, 5, 6, 7, 8), (3, 8)]


def _int8_exact(M, K, group_size, col_perm, gen):
    """Activations that per-group int8 quantization represents exactly: integers in [-127, 127]
    with one +-127 per (row, group), times a power of two per group (in reordered coordinates)."""
    G = -(-K // group_size)
    q = torch.randint(-127, 128, (M, K), generator=gen).float()
    q[:, ::group_size] = 127.0
    scale = 2.0 ** torch.randint(-6, 3, (M, G), generator=gen).float()
    xr = q * scale.repeat_interleave(group_size, 1)[:, :K]
    if not col_perm.numel():
        return xr
    x = torch.empty_like(xr)
    x[:, col_perm.long()] = xr
    return x


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 150), K=st.integers(1, 300), block_rows=st.sampled_from([8, 24, 64, 512]),
       group_size=st.sampled_from([32, 64, 128, 512]), widths=st.sampled_from(WIDTH_SETS),
       permute=st.booleans(), M=st.sampled_from([1, 2, 3, 4, 5, 9, 17]), seed=st.integers(0, 2**16))
def test_kernel_equals_the_reference(N, K, block_rows, group_size, widths, permute, M, seed):
    floor = SQNR_FLOOR_DB
    if group_size == 512:  # wide groups: the int16 sums are widened more than once per plane (W = 2, 4)
        K += 300
        floor -= 3  # one int8 scale over 512 Gaussian activations: a larger absmax, coarser steps
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    gen = torch.Generator().manual_seed(seed)
    # exact where int8 is exact: integer sums, then fp32 rounding only
    x = _int8_exact(M, K, group_size, p.col_perm, gen)
    y, ref = cpu.linear_cpu(x, *packed_args(p)), linear_ref(x, *packed_args(p))
    torch.testing.assert_close(y, ref, rtol=2e-5, atol=1e-5 * float(ref.abs().max()) + 1e-6)
    assert torch.equal(cpu.linear_cpu(x, *packed_args(p), portable=True), y)  # AVX2 == portable, bit for bit
    # Gaussian activations: the int8 rounding costs a bounded SQNR
    x = torch.randn(M, K, generator=gen)
    y, ref = cpu.linear_cpu(x, *packed_args(p)), linear_ref(x, *packed_args(p))
    if N * K >= 4096:  # a floor over a layer's outputs (tiny 1-bit layers cancel to small sums)
        assert sqnr_db(y, ref) >= floor
    assert torch.equal(cpu.linear_cpu(x, *packed_args(p), portable=True), y)
    # VNNI's dpbusd (where built) and AVX2's maddubs pair sums: the same integer sums
    assert torch.equal(cpu.linear_cpu(x, *packed_args(p), maddubs=True), y)
    if M >= 16:  # prefill decodes multi-plane blocks once per chunk: the same integer sums as one row at a time
        assert torch.equal(torch.cat([cpu.linear_cpu(x[i : i + 1], *packed_args(p)) for i in range(M)]), y)
    # residual activations: the second int8 row carries what the first missed
    yr = cpu.linear_cpu(x, *packed_args(p), residual=True)
    if N * K >= 4096:
        assert sqnr_db(yr, ref) >= RESIDUAL_FLOOR_DB
    assert torch.equal(cpu.linear_cpu(x, *packed_args(p), portable=True, residual=True), yr)
    # the panel layout (the words moved into the kernel's read order) gives the same bits
    pa = (SFMPWeight.from_packed(p).to_layout("panel").data["qweight"], *packed_args(p)[1:])
    for portable in (False, True):
        assert torch.equal(cpu.linear_cpu(x, *pa, portable=portable, panel=True), y)
        assert torch.equal(cpu.linear_cpu(x, *pa, portable=portable, panel=True, maddubs=True), y)
        assert torch.equal(cpu.linear_cpu(x, *pa, portable=portable, residual=True, panel=True), yr)


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 300), K=st.integers(1, 200), block_rows=st.sampled_from([8, 64, 100, 512]),
       group_size=st.sampled_from([32, 128]), widths=st.sampled_from(WIDTH_SETS), permute=st.booleans(),
       seed=st.integers(0, 2**16))
def test_embedding_rows_equal_the_dequantized_weight_in_both_orders(N, K, block_rows, group_size, widths, permute, seed):
    p = random_packed(N, K, block_rows, group_size, widths, permute, seed)
    ids = torch.randint(0, N, (2, 5), generator=torch.Generator().manual_seed(seed))
    want = p.dequantize(torch.float32)[ids]
    op = torch.ops.sfmp.embedding_cpu.v2
    assert torch.equal(op(ids, *packed_args(p)), want)
    pa = (SFMPWeight.from_packed(p).to_layout("panel").data["qweight"], *packed_args(p)[1:])
    assert torch.equal(op(ids, *pa, cpu.flags(panel=True)), want)
    with pytest.raises(RuntimeError, match="out of range"):
        op(torch.tensor([N]), *packed_args(p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_shapes_and_non_finite_inputs(dtype):
    p = random_packed(40, 70, 16, 32, (2, 5), True, seed=1)
    x = torch.randn(2, 3, 70).to(dtype)
    y = cpu.linear_cpu(x, *packed_args(p))
    assert y.dtype == dtype and y.shape == (2, 3, 40)
    assert sqnr_db(y.float(), linear_ref(x.float(), *packed_args(p))) >= SQNR_FLOOR_DB - 6  # bf16 output rounding
    assert cpu.linear_cpu(x[:0], *packed_args(p)).shape == (0, 3, 40)
    assert cpu.linear_cpu(x[:0], *packed_args(p), residual=True).shape == (0, 3, 40)
    x = torch.randn(2, 70)
    x[1, 5] = float("nan")
    x[0, 40:] = 0.0  # an all-zero group: no scale, nothing to add
    for residual in (False, True):
        y = cpu.linear_cpu(x, *packed_args(p), residual=residual)
        assert y[0].isfinite().all() and y[1].isnan().any()  # a NaN input is never hidden
    with pytest.raises(RuntimeError, match="71 features, the layer takes 70"):
        cpu.linear_cpu(torch.randn(2, 71), *packed_args(p))


def test_compiled_equals_eager_and_gradient_matches_the_reference():
    p = random_packed(64, 96, 32, 32, (2, 3, 8), True, seed=2)
    args = packed_args(p)
    x = torch.randn(3, 96)
    torch._dynamo.reset()
    f = torch.compile(lambda t: cpu.linear_op()(t, *args, 0) * 2.0 + 1.0, fullgraph=True)
    torch.testing.assert_close(f(x), cpu.linear_cpu(x, *args) * 2.0 + 1.0, rtol=1e-6, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    cpu.linear_cpu(xg, *args).sum().backward()
    xr = x.clone().requires_grad_(True)
    linear_ref(xr, *args).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)  # frozen weights: dX = dY @ W, exact either way
    torch.library.opcheck(cpu.linear_op(), (x, *args, 0),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_a_corrupt_cached_build_is_rebuilt(tmp_path, monkeypatch):
    """A damaged shared object under the cache key is replaced, never loaded as is (and a build
    with no compiler says so once instead of failing every call)."""
    monkeypatch.setenv("SFMP_CACHE_DIR", str(tmp_path))
    # a one-line source stands in for the kernels: what is tested is the cache, not a minute of g++
    src = tmp_path / "one.cpp"
    src.write_text('extern "C" int sfmp_one() { return 1; }\n')
    monkeypatch.setattr(cpu_build, "SOURCES", (src,))
    monkeypatch.setattr(cpu_build, "HASHED", (src,))
    cxx = cpu_build.compiler()
    so = cpu_build.cache_dir() / f"{cpu_build._key(cxx, True)}.so"
    so.parent.mkdir(parents=True)
    so.write_bytes(b"not an ELF file")
    assert cpu_build._build(cxx, True) == so and so.read_bytes()[:4] == b"\x7fELF"
    monkeypatch.setattr(cpu_build, "_state", {})
    monkeypatch.setattr(cpu_build, "compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C.. compiler"):
        assert cpu_build.load() is False
    assert cpu_build.load() is False  # decided once per process
