"""DCNv3/DCNv4 in ``run_gpu.py`` (an operator module of ``run_gpu.OPERATOR_MODULES``):
``correctness(rec, ctx)`` runs in the correctness step, ``timing(rec, ctx)`` is step
``bench_dcnv3``.

- Correctness: ``dcnv3`` (Triton on CUDA) on awkward cases (``testing_dcn.CASES``: groups,
  any kernel, remove_center, asymmetric stride/pad/dilation, offset_scale, 1x1 images, far
  offsets, batch 0) in float32, float16 and bfloat16, output and the three gradients against
  the float64 oracle with the shared tolerance table; ``dcnv4`` against ``dcnv3`` on the split
  tensors (padding columns' gradient 0); one row per check with ``passed``.
- Timing: (8, 56, 56, 64) G=4, (8, 28, 28, 128) G=8, (8, 14, 14, 256) G=16, (8, 7, 7, 512)
  G=32, 3x3, bfloat16 and float32, forward and forward+backward: ours, InternImage's
  pure-PyTorch formulation (``grid_sample``) and a depthwise 3x3 cuDNN ``conv2d`` (the floor);
  medians of ``--reps`` CUDA-event timings, peak allocated memory above the inputs.

In the dry run (CPU, Triton interpreter) both parts run on tiny cases so the plumbing is
exercised; its timings mean nothing.
"""

from __future__ import annotations

import statistics

from gpu_bench import peak_bytes, timer

STAGES = [(8, 56, 64, 4), (8, 28, 128, 8), (8, 14, 256, 16), (8, 7, 512, 32)]
DRY_STAGES = [(1, 3, 4, 2)]
CHECK_CASES = ("default", "groups4", "remove-center-5x3", "asym", "offset-scale",
               "stride2-dil2", "kernel5x4", "1x1-image", "far-offsets", "batch0")
DRY_CASES = ("1x1-image",)  # the interpreter takes 3 s on it, 17 s on "default"
CORRECTNESS_BY_DTYPE = True  # one correctness task per dtype (ctx.dtypes)
STAGE_S = 6  # seconds per stage shape (two dtypes; the kernels compiled by correctness)


def check_cases(rec, torch, dev, cases, dtypes) -> None:
    """One row per (case, dtype): output and gradients against the float64 oracle."""
    import deformconv
    from deformconv.testing_dcn import CASES, LEAVES, check, run_both

    for name in cases:
        for dname in dtypes:
            dtype = getattr(torch, dname)
            try:
                got, want = run_both(CASES[name], dtype, dev)
                check(got, want, dtype, name)
                passed, error = True, None
            except AssertionError as e:
                passed, error = False, str(e)[:300]
            rec.add(check="dcnv3_vs_oracle", case=name, dtype=dname, passed=passed,
                    **({"error": error} if error else {}))
    if "float32" not in dtypes:  # dcnv4 against dcnv3 once, in float32
        return
    p = CASES[cases[0]]
    t = p.tensors(torch.float32, dev, requires_grad=True)
    y3 = deformconv.dcnv3(*(t[k] for k in LEAVES), *p.params())
    y4 = deformconv.dcnv4(t["input"], t["offset_mask"], *p.params())
    g4 = torch.autograd.grad(y4, [t["offset_mask"]], t["grad_out"])[0]
    pad = g4[..., p.group * 3 * p.points:]
    y3, y4 = y3.detach(), y4.detach()
    ok = bool((y3 - y4).abs().max() <= 1e-6 * max(1.0, float(y3.abs().max()))
              and (pad.numel() == 0 or pad.abs().max() == 0))
    rec.add(check="dcnv4_equals_dcnv3", case=cases[0], dtype="float32", passed=ok)


def time_stages(rec, torch, dev, stages, dtypes, reps) -> None:
    from deformconv.testing_dcn import DCNProblem, bench_contenders

    run = timer(torch, dev)
    for N, H, C, G in stages:
        p = DCNProblem(N=N, H=H, W=H, group=G, group_channels=C // G)
        for dname in dtypes:
            fns = bench_contenders(p, getattr(torch, dname), dev)
            for mode in ("forward", "train"):
                for f in fns.values():  # warm up (Triton compiles)
                    f[mode]()
                times = {k: [] for k in fns}
                for r in range(reps):
                    for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                        times[k].append(run(fns[k][mode]))
                floor = statistics.median(times["dwconv3x3"])
                for k, ts in times.items():
                    med = statistics.median(ts)
                    rec.add(kind="timing", operator="dcnv3", shape=f"{N}x{H}x{H}x{C}", group=G,
                            dtype=dname, mode={"forward": "fwd", "train": "fwd+bwd"}[mode],
                            contender="deformconv" if k == "dcnv3" else k,
                            median_ms=round(med, 4),
                            ratio_to_dwconv=round(med / floor, 2) if floor else None,
                            peak_bytes=peak_bytes(torch, dev, fns[k][mode]))


def correctness(rec, ctx) -> None:
    """The oracle rows (tiny cases in the dry run)."""
    if ctx.dry:
        check_cases(rec, ctx.torch, ctx.dev, DRY_CASES, ("float32",))
    else:
        check_cases(rec, ctx.torch, ctx.dev, CHECK_CASES,
                    getattr(ctx, "dtypes", ("bfloat16", "float16", "float32")))


def timing(rec, ctx) -> None:
    """The timing rows, bfloat16 first (one tiny stage in the dry run)."""
    if ctx.dry:
        time_stages(rec, ctx.torch, ctx.dev, DRY_STAGES, ("float32",), ctx.reps)
    else:
        for stage in STAGES:
            if not ctx.fits(STAGE_S):
                rec.add(kind="timing", operator="dcnv3", shape="x".join(map(str, stage)),
                        contender=None, estimate_s=STAGE_S,
                        skipped=f"budget: {ctx.remaining():.0f} s left")
                continue
            time_stages(rec, ctx.torch, ctx.dev, [stage], ("bfloat16", "float32"), ctx.reps)
