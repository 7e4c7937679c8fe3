"""Non-checkpoint scenarios for benchmarks/hostile.py (issue 13): options, weights, the compile
backend, kernel edge shapes, kernel caches, the CLI. A case returns ("correct" | "wrong", detail)
after checking its result against the contract (stated per case); exceptions are classified by
hostile.py.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings

from hostile_checkpoints import plant_special

import torch
from torch import nn

IDS = torch.tensor([[0, 5, 17, 42, 99, 128, 200, 255]])
NAN, INF = float("nan"), float("inf")


def _decode(v):
    """JSON cannot carry NaN/inf/tuples portably: scenarios spell them as tagged strings."""
    if isinstance(v, str) and v.startswith("@"):
        return {"@nan": NAN, "@inf": INF, "@-inf": -INF, "@none": None}.get(v, v)
    if isinstance(v, list):
        return tuple(_decode(x) for x in v)
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    return v


# --- options ------------------------------------------------------------------------------------

def option(ctx, where, kw):
    """One option set through quantize() or sfmp_backend(). Contract when accepted: finite logits,
    achieved average bits within the budget (a cap), every planned layer quantized."""
    from sfmp_compile import quantize, sfmp_backend
    from sfmp_compile.eval.models import tiny_llama
    kw = _decode(kw)
    m = tiny_llama()
    if where == "quantize":
        base = dict(salience="weight", block_rows=16, group_size=32)
        base.update(kw)
        bits = base.pop("bits", 3.0)
        quantize(m, bits, **base)
        plan = m.sfmp_plan
        out = m(IDS).logits
    else:
        base = dict(salience="weight", block_rows=16, group_size=32, inner="aot_eager", cpu_kernel="reference")
        base.update(kw)
        be = sfmp_backend(**base)
        with torch.no_grad():
            out = torch.compile(m, backend=be)(IDS).logits
        torch._dynamo.reset()
        plan = be.plan
    if not torch.isfinite(out).all():
        return "wrong", "accepted, non-finite logits"
    avg, target = plan.average_bits(), plan.config.bits
    if avg > target + 1e-6:
        return "wrong", f"accepted, average {avg:.4f} bits over the {target} budget"
    return "correct", f"accepted, {avg:.3f} avg bits, finite logits"


# --- weights ------------------------------------------------------------------------------------

def _hostile_weight(kind, N, K, dtype):
    g = torch.Generator().manual_seed(N * 1000 + K)
    w = torch.randn(N, K, generator=g) * 0.02
    table = {
        "normal": lambda: w, "tiny_1e-5": lambda: w * 5e-4, "subnormal_1e-30": lambda: w * 1e-28,
        "huge_1e5": lambda: w * 5e6, "near_fp16_max": lambda: w * 1e6, "outlier": lambda: w.index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(1e4)),
        "constant": lambda: torch.full((N, K), 0.5), "zeros": lambda: torch.zeros(N, K),
        "one_row": lambda: torch.zeros(N, K).index_fill_(0, torch.tensor([0]), 0.3),
        "nan": lambda: w.index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(NAN)),
        "inf": lambda: w.index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(INF)),
        "1e30": lambda: w.index_put_((torch.tensor([0]), torch.tensor([0])), torch.tensor(1e30)),
        "negative_only": lambda: -w.abs(), "positive_only": lambda: w.abs(),
    }
    return table[kind]().to(dtype)


def _in_original(p, t):
    """A per-(group, reordered row) table [G, N] spread to each weight, [N, K] in ORIGINAL order."""
    s = t.float().t().repeat_interleave(p.group_size, dim=1)[:, : p.in_features]
    out = s.clone()
    if p.col_perm.numel():
        out[:, p.col_perm.long()] = s
        s = out.clone()
    if p.row_perm.numel():
        out[p.row_perm.long()] = s
    return out


def _scale_in_original(p):
    """Each weight's quantization step, [N, K] in the ORIGINAL row/column order."""
    return _in_original(p, p.scales)


def weight(ctx, kind, bits, shape, dtype):
    """quantize() of one hostile weight. Contract when accepted: every dequantized weight within
    half a step (+ fp16 rounding slack) of the original clamped to its group's grid (clip search
    may narrow the grid); a layer quantized to (near) all zeros only with a warning naming it."""
    from sfmp_compile import quantize
    from sfmp_compile.linear import SFMPLinear
    N, K = shape
    dt = getattr(torch, dtype)
    lin = nn.Linear(K, N, bias=False)
    w0 = _hostile_weight(kind, N, K, dt if dt.is_floating_point else torch.float32)
    if not dt.is_floating_point:
        lin.weight = nn.Parameter((w0 * 100).to(dt), requires_grad=False)
    else:
        lin.weight = nn.Parameter(w0.to(dt), requires_grad=False)
    m = nn.Sequential(lin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize(m, bits, salience="weight", block_rows=16, group_size=32, skip=())
    q = m[0]
    assert isinstance(q, SFMPLinear)
    p = q.packed
    w_hat, w = p.dequantize(), lin.weight.float()
    step = _scale_in_original(p)
    z = _in_original(p, p.zeros)
    top = 2.0 ** _in_original(p, p.grid.expand_rows(p.bits.long()).t()) - 1
    # clip search may shrink a group's range: a weight outside it lands on the nearest end
    err = (w_hat - torch.maximum(torch.minimum(w, (top - z) * step), -z * step)).abs()
    if not bool((err <= 0.5 * step + 2e-3 * w.abs() + 1e-12).all()):
        i = int(((err - 0.5 * step) / step.clamp_min(1e-30)).argmax())
        return "wrong", f"weight off by more than half a step (at {divmod(i, K)}: err {float(err.view(-1)[i]):.3g}, step {float(step.view(-1)[i]):.3g})"
    rel = float((w_hat - w).norm() / w.norm()) if float(w.norm()) > 0 else 0.0
    if rel > 0.5 and not caught:
        return "wrong", f"relative error {rel:.3g} without a warning"
    return "correct", f"within half a step (rel err {rel:.3g}{', warned' if caught else ''})"


# --- compile backend ----------------------------------------------------------------------------

TOL = {"reference": 1e-5, "packed": 2e-3, "int4": 2e-2}


def backend(ctx, model, inner, cpu_kernel, seq, batch, extra):
    """torch.compile with the backend vs the same quantized weights run eagerly on the same CPU
    kernel (quantize(copy, plan=be.plan) + prepare_for): equal within the kernel's tolerance
    relative to the largest logit (reference: 1e-5, exact op; packed: 2e-3; int4: 2e-2, bf16)."""
    from sfmp_compile import quantize, sfmp_backend
    from sfmp_compile.eval.models import tiny_gpt2, tiny_llama
    from sfmp_compile.linear import SFMPLinear
    torch._dynamo.reset()
    m = tiny_llama() if model == "llama" else tiny_gpt2()
    if extra == "bf16":
        m = m.to(torch.bfloat16)
    twin = copy.deepcopy(m)
    be = sfmp_backend(bits=2.5, salience="weight", block_rows=32, group_size=32, skip_bits={}, inner=inner,
                      cpu_kernel=cpu_kernel, release_weights=(extra == "release"))
    ids = torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seq))
    cm = torch.compile(m, backend=be)
    with torch.no_grad():
        out = cm(ids).logits.float()
        if extra == "recompile":
            ids = torch.randint(0, 256, (batch, seq + 5), generator=torch.Generator().manual_seed(1))
            out = cm(ids).logits.float()
    quantize(twin, plan=be.plan)
    for mod in twin.modules():
        if isinstance(mod, SFMPLinear):
            mod.prepare_for("cpu", cpu_kernel)
    with torch.no_grad():
        ref = twin(ids).logits.float()
    torch._dynamo.reset()
    if not torch.isfinite(out).all():
        return "wrong", "non-finite logits"
    d = float((out - ref).abs().max() / ref.abs().max())
    tol = TOL[cpu_kernel] * (10 if extra == "bf16" else 1)
    return ("correct" if d <= tol else "wrong"), f"max rel diff {d:.2e} (tol {tol:.0e})"


# --- kernel edge shapes -------------------------------------------------------------------------

def _packed(N, K, br, gs, widths, permute, seed=0):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.helpers import random_packed
    return random_packed(N, K, br, gs, tuple(widths), permute, seed)


def _x(M, K, dtype, special):
    g = torch.Generator().manual_seed(M * 7 + K)
    x = torch.randn(M, K, generator=g)
    if special == "nan" and M:
        x[0, 0] = NAN
    elif special == "inf" and M:
        x[0, -1] = INF
    elif special == "huge" and M:
        x = x * 1e30
    elif special == "zeros":
        x = torch.zeros(M, K)
    x = x.to(getattr(torch, dtype))
    if special == "noncontig":
        x = torch.cat([x, x], dim=1)[:, ::2]
    elif special == "3d":
        x = x.reshape(1, M, K)
    return x


def kernel(ctx, op, N, K, br, gs, widths, M, dtype, special, permute):
    """One op on one (shape, width set, input) vs F.linear on the dequantized weight in fp32. Bounds:
    ref 1e-5·(|x|@|W|); cpu (int8 activations per (row, group)): the int8 rounding bound
    Σ_g absmax_g/254·Σ|W| + 1e-5·(|x|@|W|); int4 (bf16 x, scales, output): 2^-7·(|x|@(|W| + 8·step));
    interp (Triton, fp32 dots): 1e-4·(|x|@|W|). Non-finite reference outputs must be non-finite
    in the same places; bf16/fp16 inputs add their output rounding (2^-7 / 2^-10 of |y|)."""
    from sfmp_compile.ops.dispatch import sfmp_linear
    p = _packed(N, K, br, gs, widths, permute)
    x = _x(M, K, dtype, special)
    y = sfmp_linear(x, p, backend=op).float().reshape(-1, N)
    xf = x.float().reshape(-1, K)
    W = p.dequantize()
    ref = xf @ W.t()
    if tuple(y.shape) != tuple(ref.shape):
        return "wrong", f"shape {tuple(y.shape)} != {tuple(ref.shape)}"
    fin = torch.isfinite(ref)
    if not torch.equal(torch.isfinite(y), fin):
        return "wrong", f"non-finite pattern differs ({int((torch.isfinite(y) != fin).sum())} entries)"
    if not M:
        return "correct", f"empty batch -> {tuple(y.shape)}"
    ax, aw = xf.abs().nan_to_num(posinf=0.0), W.abs()
    mag = ax @ aw.t()
    if op == "ref":
        bound = 1e-5 * mag
    elif op == "cpu":
        pad = (-K) % gs
        a = torch.nn.functional.pad(ax, (0, pad)).view(ax.shape[0], -1, gs).amax(-1)  # [M, G] per x group
        colmax = a.repeat_interleave(gs, 1)[:, :K]
        bound = (colmax / 254.0) @ aw.t() * 1.01 + 1e-5 * mag
    elif op == "int4":
        bound = 2 ** -7 * (ax @ (aw + 8 * _scale_in_original(p)).t())
    else:
        bound = 1e-4 * mag
    bound = bound + {"float32": 0.0, "bfloat16": 2 ** -7, "float16": 2 ** -10}[dtype] * ref.abs() + 1e-30
    if fin.any():
        over = ((y - ref).abs() - bound)[fin]
        if float(over.max()) > 0:
            return "wrong", f"exceeds its bound by {float(over.max()):.3g}"
    return "correct", f"within bound ({M}x{K} -> {N})"


# --- kernel caches ------------------------------------------------------------------------------

def _fresh_codegen(cache):
    from sfmp_compile.codegen import autotune, generate
    os.environ["SFMP_CACHE_DIR"] = cache
    generate._kernels.clear(), generate._sources.clear(), generate._paths.clear()
    autotune._tuned.clear()


def kernel_cache(ctx, plant, family_m):
    """A tampered kernel-source cache entry, then the interpreted kernel runs: its output must equal
    the reference op (1e-4) and no planted code may have run."""
    from sfmp_compile.codegen import generate
    from sfmp_compile.codegen.families import FAMILIES
    from sfmp_compile.ops.dispatch import sfmp_linear
    cache = tempfile.mkdtemp(prefix="kc-", dir=ctx["tmp"])
    _fresh_codegen(cache)
    marker = os.path.join(cache, "PWNED")
    evil = f"open({marker!r}, 'w').write('ran')\n".encode()
    kdir = os.path.join(cache, "kernels")
    if plant == "cache_dir_is_file":
        with open(kdir, "w") as f:
            f.write("x")
    else:
        os.makedirs(kdir)
    p = _packed(48, 96, 16, 32, (2, 3), True)
    widths = tuple(sorted(set(p.bits.view(-1).tolist())))
    for fam in FAMILIES:
        key = generate.KernelKey(fam, widths)
        import hashlib
        src = generate.emit_source(key)
        path = os.path.join(kdir, f"{key.name}_{hashlib.sha256(src.encode()).hexdigest()[:12]}.py")
        if plant_special(path, plant):
            pass
        elif plant == "non_utf8":
            open(path, "wb").write(b"\xff\xfe\x00garbage")
        elif plant == "planted_code":
            open(path, "wb").write(evil + src.encode())
        elif plant == "symlink_to_evil":
            ev = os.path.join(cache, f"evil_{fam}.py")
            open(ev, "wb").write(evil)
            os.symlink(ev, path)
        elif plant == "truncated":
            open(path, "wb").write(src.encode()[: len(src) // 2])
        elif plant == "all_names_taken":
            for i in range(0, 101):
                os.makedirs(path if i == 0 else path[:-3] + f".{i}.py")
    if plant == "fingerprint_stub":
        open(os.path.join(kdir, "sfmp_codegen_fingerprint_0123456789abcdef.py"), "wb").write(evil)
        from sfmp_compile.ops import triton as triton_ops
        triton_ops._register_cache_keys()
    x = torch.randn(family_m, 96)
    y = sfmp_linear(x, p, backend="interp")
    ref = sfmp_linear(x, p, backend="ref")
    if os.path.exists(marker):
        return "wrong", "planted code was executed"
    d = float((y - ref).abs().max() / ref.abs().max())
    return ("correct" if d <= 1e-4 else "wrong"), f"kernel ran from a checked source, rel diff {d:.1e}"


AUTOTUNE_PLANTS = {
    "list": b"[1, 2, 3]", "configs_list": b'{"configs": [1]}', "configs_str_values": b'{"configs": {"k": "x"}}',
    "config_bad_field": b'{"configs": {"k": {"BLOCK_M": -1, "nope": 3}}}', "not_utf8": b"\xff\xfe{",
    "deep": b"[" * 100000 + b"]" * 100000, "huge_int": b'{"configs": {"k": {"BLOCK_M": ' + b"9" * 5000 + b"}}}",
    "meta_list": b'{"meta": [], "configs": {}}', "empty": b"", "nan": b'{"configs": NaN}',
}


def autotune_table(ctx, plant):
    """A tampered autotune table (or a FIFO / directory in its place): reading it gives only valid
    configs, and a save afterwards writes a valid table holding the new entry (or is refused clearly)."""
    from sfmp_compile.codegen import autotune
    from sfmp_compile.codegen.launch import Config
    cache = tempfile.mkdtemp(prefix="at-", dir=ctx["tmp"])
    _fresh_codegen(cache)
    path = autotune.tuned_cache_path("cpu")
    path.parent.mkdir(parents=True)
    if not plant_special(path, plant):
        path.write_bytes(AUTOTUNE_PLANTS[plant])
    table = autotune._tuned_table("cpu")
    for k, v in table.items():
        Config.from_dict(v)
    cfg = autotune.FAMILIES["gemv"].FALLBACK
    key = "gemv|1|N64|K64|w23|g32|r16|float32"
    autotune.save_tuned("cpu", key, cfg, 0.5)
    if plant in ("fifo", "directory"):  # left in place; the entry lives on in memory
        ok = key in autotune._tuned_table("cpu") and (path.is_fifo() if plant == "fifo" else path.is_dir())
    else:
        autotune._tuned.clear()
        ok = key in json.loads(path.read_text()).get("configs", {})
    return ("correct" if ok else "wrong"), f"read {len(table)} valid entries; save {'kept' if ok else 'lost'} the entry"


def autotune_race(ctx, procs, saves):
    """``procs`` processes each saving ``saves`` entries at once: every entry must survive."""
    from sfmp_compile.codegen import autotune
    cache = tempfile.mkdtemp(prefix="race-", dir=ctx["tmp"])
    _fresh_codegen(cache)
    code = ("import sys; from sfmp_compile.codegen import autotune as a\n"
            "cfg = a.FAMILIES['gemv'].FALLBACK\n"
            "for i in range(int(sys.argv[2])): a.save_tuned('cpu', f'gemv|1|N{sys.argv[1]}|K{i}|w2|g32|r16|float32', cfg, 1.0)\n")
    env = dict(os.environ, SFMP_CACHE_DIR=cache)
    ps = [subprocess.Popen([sys.executable, "-c", code, str(j), str(saves)], env=env) for j in range(procs)]
    rcs = [p.wait(timeout=240) for p in ps]
    if any(rcs):
        return "wrong", f"a saving process failed: {rcs}"
    n = len(json.loads(autotune.tuned_cache_path("cpu").read_text())["configs"])
    return ("correct" if n == procs * saves else "wrong"), f"{n} of {procs * saves} entries survived"


# --- CLI ----------------------------------------------------------------------------------------

def cli(ctx, argv, expect_ok):
    """``sfmp`` with hostile arguments, in-process. Contract: exit 2 with ONE line on stderr and no
    traceback for a user error; exit 0 where the arguments are valid."""
    from sfmp_compile import cli as cli_mod
    argv = [a.replace("{tmp}", ctx["tmp"]).replace("{llama}", ctx.get("llama", "")).replace("{corrupt}", ctx.get("corrupt", ""))
            for a in argv]
    for a in argv:  # a few scenarios need a file to exist first
        if a.endswith("existing_file"):
            open(a, "w").write("keep")
        if a.endswith("binary.txt"):
            open(a, "wb").write(b"\xff\xfe\x00\x81" * 100)
        if a.endswith("empty.txt"):
            open(a, "w").close()
        if a.endswith("a_dir") or a.endswith("a_dir.json") or a.endswith("a_dir.png"):
            os.makedirs(a, exist_ok=True)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli_mod.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    lines = [l for l in err.getvalue().splitlines() if l.strip() and not l.startswith(("Warning", "  warnings.warn"))]
    if "Traceback" in err.getvalue():
        return "crash", "traceback on stderr: " + lines[-1][:200]
    if rc == 2 and len(lines) == 1:
        return ("wrong", "valid arguments refused: " + lines[0][:200]) if expect_ok else ("clear", "one line, exit 2: " + lines[0][:200])
    if rc == 0:
        return ("correct", "exit 0") if expect_ok else ("wrong", "bad arguments accepted (exit 0)")
    return "crash", f"exit {rc}, {len(lines)} stderr lines: {' / '.join(lines)[:200]}"
