"""Step ``msda`` of the GPU script: multi-scale deformable attention on the GPU.

Correctness: the Triton kernels (through the public function, backend ``auto``) against the
float64 loop oracle on small problems (float32, float16, bfloat16; forward and the three
gradients; locations leaving the maps, hostile NaN/inf/1e30 locations, an empty level), and
against the ``grid_sample`` formula in float64 on CUDA at a larger shape; deterministic mode
bitwise repeatable. Timing: Deformable DETR's encoder scale (batch 2, levels 100x134, 50x67,
25x34, 13x17, queries = keys, 8 heads x 32 channels, 4 points) and decoder scale (300
queries), float32 and bfloat16, forward and forward+backward, contenders alternating within
every repeat (ours; the ``grid_sample`` fallback; deformops' MSDA when it imports and has
one), medians, and the peak memory each call allocates beyond its inputs
(``torch.cuda.max_memory_allocated``). A contender that is missing or fails is a row with the
reason. ``--dry-run``: CPU tensors through the Triton interpreter, tiny shapes, one repeat.
"""

from __future__ import annotations

import statistics
import time

ARGS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
        "attention_weights")
GRADS = ("value", "sampling_locations", "attention_weights")
TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 4e-2}
ORACLE_CASES = [dict(N=2, Q=24, M=4, D=16, shapes=((9, 13), (5, 7), (3, 4)), P=3),
                dict(N=1, Q=9, M=2, D=40, shapes=((6, 1), (1, 5)), P=2, margin=0.6)]
DRY_CASES = [dict(N=1, Q=3, M=2, D=4, shapes=((3, 4), (2, 2)), P=2)]
TIMING = {"encoder": None, "decoder": 300}
DEFORMOPS_NAMES = ("ms_deform_attn", "multi_scale_deformable_attention",
                   "multi_scale_deform_attn")


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def _run(torch, fn, t):
    out = fn(*(t[k] for k in ARGS))
    g = torch.ones_like(out)
    return out, torch.autograd.grad(out, [t[k] for k in GRADS], g)


def correctness(rec, ctx) -> None:
    """Rows ``check`` = ``oracle`` / ``grid_sample_f64`` / ``deterministic``."""
    torch, dev = ctx.torch, ctx.dev
    from deformconv import ms_deform_attn
    from deformconv.ops.ms_deform_attn.reference import (
        make_inputs,
        ms_deform_attn_grads_ref,
        ms_deform_attn_grid_sample,
        ms_deform_attn_ref,
    )
    cases = DRY_CASES if ctx.dry else ORACLE_CASES
    for i, case in enumerate(cases):
        for dtype in ("float32", "float16", "bfloat16"):
            for hostile in (False, True):
                t = make_inputs(**case, dtype=getattr(torch, dtype), device=dev, seed=i)
                if hostile:
                    loc = t["sampling_locations"]
                    loc[:, ::2, ..., 0] = float("nan")
                    loc[:, 1::3, ..., 1] = 1e30
                    loc[:, 2::3, ..., 0] = -float("inf")
                for k in GRADS:
                    t[k].requires_grad_(True)
                out, grads = _run(torch, ms_deform_attn, t)
                c = {k: v.detach().cpu() for k, v in t.items()}
                args = (c["value"], c["spatial_shapes"], c["sampling_locations"],
                        c["attention_weights"])
                ref = ms_deform_attn_ref(*args)
                ref_grads = ms_deform_attn_grads_ref(torch.ones_like(ref), *args)
                errs = [_rel(out.cpu(), ref)] + [_rel(g.cpu(), r)
                                                 for g, r in zip(grads, ref_grads)]
                finite = all(torch.isfinite(g).all() for g in (out, *grads))
                rec.add(check="oracle", case=i, dtype=dtype, hostile=hostile,
                        errors=dict(zip(("output", *GRADS), errs)), tolerance=TOL[dtype],
                        passed=bool(finite and max(errs) <= TOL[dtype]))
    # Float64 on CUDA runs the pure-PyTorch kernels: compare float32 Triton instead against
    # the float64 grid_sample formula at a larger shape (skipped in the dry run).
    if not ctx.dry:
        t = make_inputs(N=2, Q=2000, M=8, D=32, shapes=((50, 67), (25, 34), (13, 17)), P=4,
                        dtype=torch.float32, device=dev, seed=5, requires_grad=True)
        out, grads = _run(torch, ms_deform_attn, t)
        t64 = {k: (v.detach().double().requires_grad_(True) if v.is_floating_point() else v)
               for k, v in t.items()}
        ref, ref_grads = _run(torch, lambda v, s, i_, loc, w: ms_deform_attn_grid_sample(
            v, s, loc, w), t64)
        errs = [_rel(out, ref)] + [_rel(g, r) for g, r in zip(grads, ref_grads)]
        rec.add(check="grid_sample_f64", dtype="float32", errors=dict(zip(("output", *GRADS),
                                                                          errs)),
                tolerance=1e-4, passed=max(errs) <= 1e-4)
    t = make_inputs(**(DRY_CASES if ctx.dry else ORACLE_CASES)[0], dtype=torch.float32,
                    device=dev, requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        first = _run(torch, ms_deform_attn, t)[1]
        second = _run(torch, ms_deform_attn, t)[1]
    finally:
        torch.use_deterministic_algorithms(False)
    rec.add(check="deterministic", passed=all(torch.equal(a, b)
                                              for a, b in zip(first, second)))


def _deformops(torch):
    """deformops' MSDA entry point (the CUDA kernels' argument order), or the reason."""
    try:
        import deformops
    except Exception as e:  # noqa: BLE001 - not installed or broken build
        return None, f"deformops unavailable ({type(e).__name__}: {e})"
    for holder in (deformops, getattr(deformops, "ops", None),
                   getattr(deformops, "functional", None)):
        for name in DEFORMOPS_NAMES:
            fn = getattr(holder, name, None) if holder is not None else None
            if callable(fn):
                return fn, None
    return None, (f"deformops {getattr(deformops, '__version__', '?')} has none of "
                  f"{DEFORMOPS_NAMES}")


def _timer(torch, dev):
    def timed(fn):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    return timed


def _peak(torch, dev, fn) -> float:
    if dev != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def timing(rec, ctx) -> None:
    """Rows ``check`` = ``time``: median seconds and peak MiB of each contender."""
    torch, dev = ctx.torch, ctx.dev
    from deformconv import ms_deform_attn
    from deformconv.ops.ms_deform_attn.reference import (
        DETR_LEVELS,
        make_inputs,
        ms_deform_attn_grid_sample,
    )
    levels = ((3, 4), (2, 2)) if ctx.dry else DETR_LEVELS
    keys = sum(h * w for h, w in levels)
    deformops_fn, why = _deformops(torch)
    fns = {"deformconv": ms_deform_attn,
           "grid_sample": lambda v, s, i, loc, w: ms_deform_attn_grid_sample(v, s, loc, w)}
    if deformops_fn is not None:
        fns["deformops"] = deformops_fn
    else:
        rec.add(check="time", contender="deformops", skipped=why)
    timed = _timer(torch, dev)
    for scale, queries in TIMING.items():
        Q = 2 if ctx.dry else keys if queries is None else queries
        for dtype in ("float32", "bfloat16"):
            t = make_inputs(N=2, Q=Q, M=2 if ctx.dry else 8, D=4 if ctx.dry else 32,
                            shapes=levels, P=2 if ctx.dry else 4,
                            dtype=getattr(torch, dtype), device=dev, margin=0.05,
                            requires_grad=True)
            args = [t[k] for k in ARGS]
            leaves = [t[k] for k in GRADS]
            calls = {}
            for name, fn in fns.items():
                def fwd(fn=fn, args=args):
                    with torch.no_grad():
                        fn(*args)

                def fb(fn=fn, args=args, leaves=leaves):
                    out = fn(*args)
                    torch.autograd.grad(out, leaves, torch.ones_like(out))
                calls[name] = {"fwd": fwd, "fwd+bwd": fb}
            for mode in ("fwd", "fwd+bwd"):
                live = {}
                for name, c in calls.items():
                    try:
                        c[mode]()  # warm up (compiles)
                        live[name] = c[mode]
                    except Exception as e:  # noqa: BLE001 - a row, not a crash
                        rec.add(check="time", scale=scale, dtype=dtype, mode=mode,
                                contender=name, skipped=f"{type(e).__name__}: {e}"[:300])
                times = {n: [] for n in live}
                for r in range(ctx.reps):
                    for n in (list(live) if r % 2 == 0 else list(live)[::-1]):
                        times[n].append(timed(live[n]))
                base = statistics.median(times["grid_sample"]) if "grid_sample" in times \
                    else float("nan")
                for n, ts in times.items():
                    med = statistics.median(ts)
                    rec.add(check="time", scale=scale, queries=Q, dtype=dtype, mode=mode,
                            contender=n, median_ms=med * 1e3, reps=len(ts),
                            speedup_vs_grid_sample=base / med if med else None,
                            peak_extra_MiB=_peak(torch, dev, live[n]))


def step_msda(rec, ctx) -> None:
    """The ``msda`` step: correctness rows, then timing rows."""
    from deformconv import use_backend
    with use_backend("triton" if ctx.dry else "auto"):
        correctness(rec, ctx)
        timing(rec, ctx)
