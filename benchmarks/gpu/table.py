"""The README table and the issue's goals, from the rows ``run_gpu.py`` wrote.

    python benchmarks/gpu/table.py RESULTS_DIR [--json]

Reads every ``*.json`` list of rows in RESULTS_DIR (``bench.json`` gives the table) and prints
(a) one Markdown table per dtype of the 2-D benchmark and (b) each goal with its
measured ratio and whether it is met. ``--json`` prints the goals as JSON instead.

Goals (bfloat16, geometric mean over the four main shapes, ours = ``deformconv``):

1. forward within 1.3x of cuDNN ``conv2d``;
2. forward+backward within 2.0x of ``conv2d``;
3. at least 3x faster than torchvision's forward+backward. torchvision has no bfloat16 kernel,
   so ours in bfloat16 is compared with torchvision in float16, its half-precision kernel and
   what a torchvision user trains in; the same-dtype float16 ratio is printed beside it;
4. faster than deformops in the forward (speedup > 1);
5. faster than deformops in forward+backward;
6. peak memory of forward+backward within 1.2x of ``conv2d``'s (the largest shape's ratio is
   printed beside the geometric mean).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

OURS, FLOOR, ND_R2 = "deformconv", "cudnn_conv2d", "deformconv_nd_r2"
# The steps whose rows are the 2-D benchmark ("bench": the layout before the one-command plan).
BENCH_2D_STEPS = ("bench", "bench_bf16", "bench_fp16", "bench_fp32", "bench_small")
MAIN_COUNT = 4
DTYPES = ("bfloat16", "float16", "float32")


def load_rows(folder) -> list:
    """Every row of every ``*.json`` file in ``folder`` that holds a list of rows."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, list):
            rows += [r for r in data if isinstance(r, dict)]
    return rows


def bench_rows(rows) -> list:
    return [r for r in rows if r.get("step") in BENCH_2D_STEPS and r.get("contender")]


def _find(rows, shape, contender, dtype, mode, alongside=None):
    """The row of ``contender`` in ``dtype``; with ``alongside``, its run inside the benchmark
    of that other dtype (torchvision's float16 in the bfloat16 runs), else its own."""
    for r in rows:
        if (r["shape"], r["contender"], r["dtype"], r.get("mode"), r.get("alongside")) == (
                shape, contender, dtype, mode, alongside):
            return r
    return None


def _torchvision_fp16_beside_bf16(rows, shape, mode):
    """torchvision's float16 time to compare with ours in bfloat16: its run alongside the
    bfloat16 benchmark (same rounds), else the float16 benchmark's."""
    return (_find(rows, shape, "torchvision", "float16", mode, alongside="bfloat16")
            or _find(rows, shape, "torchvision", "float16", mode))


def _shapes(rows):
    """Shapes in first-seen order, main shapes first."""
    seen = []
    for main in (True, False):
        for r in rows:
            if bool(r.get("main")) == main and r["shape"] not in seen:
                seen.append(r["shape"])
    return seen


def _ms(r):
    return r is not None and r.get("median_ms") is not None


def _cell_ms(r, ours=None):
    if not _ms(r):
        return "n/a"
    s = f"{r['median_ms']:.3f}"
    if ours is not None and _ms(ours):
        s += f" ({r['median_ms'] / ours['median_ms']:.2f}x)"
    return s


def markdown_tables(rows) -> str:
    """One table per dtype: milliseconds per contender, ours' ratio to conv2d, TFLOP/s, peak
    memory ratio; '(Nx)' after another contender's time is how many times ours is faster."""
    rows = bench_rows(rows)
    if not rows:
        return "(no bench rows)\n"
    r0 = rows[0]
    lines = [f"GPU {r0.get('gpu')}, driver {r0.get('driver')}, torch {r0.get('torch')}, "
             f"Triton {r0.get('triton')}, commit {str(r0.get('commit'))[:12]}; "
             f"{r0.get('reps')} alternating repeats, medians (CUDA events); "
             f"{r0.get('kernel', '3x3')} kernels, padding {r0.get('padding', 1)}, masks; float32 "
             "with TF32 off. Milliseconds; (Nx) after a "
             "contender's time: how many times faster ours is."]
    if any(r.get("dry_run") for r in rows):
        lines.insert(0, "**DRY RUN (CPU, Triton interpreter, tiny shapes): these numbers "
                        "mean nothing.**")
    notes = {}
    for dtype in DTYPES:
        drows = [r for r in rows if r["dtype"] == dtype]
        if not drows:
            continue
        lines += ["", f"**{dtype}**", "",
                  "| shape | mode | cuDNN conv2d | ours | ours / conv2d | ours TFLOP/s "
                  f"| torchvision{' (float16)' if dtype == 'bfloat16' else ''} | deformops "
                  "| N-D kernel at R=2 | peak fwd+bwd ours / conv2d |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for shape in _shapes(drows):
            for mode in ("fwd", "fwd+bwd"):
                get = {c: _find(drows, shape, c, dtype, mode) for c in
                       (FLOOR, OURS, "torchvision", "deformops", ND_R2)}
                if dtype == "bfloat16":  # no bfloat16 kernel: its float16 run beside ours
                    get["torchvision"] = _find(rows, shape, "torchvision", "float16", mode,
                                               alongside="bfloat16")
                for c in get:
                    if get[c] is None:  # a contender that did not run has one fwd+bwd row
                        miss = _find(drows, shape, c, dtype, "fwd+bwd")
                        if miss and miss.get("skipped"):
                            notes[(c, dtype, miss["skipped"])] = True
                o = get[OURS]
                ratio = f"{o['ratio_to_conv2d']:.2f}" if _ms(o) and o.get(
                    "ratio_to_conv2d") else "n/a"
                tfl = f"{o['tflops']:.3g}" if _ms(o) else "n/a"
                peak = (f"{o['peak_ratio_to_conv2d']:.2f}" if mode == "fwd+bwd" and _ms(o)
                        and o.get("peak_ratio_to_conv2d") else "")
                small = "" if o is None or o.get("main") else " (small map)"
                lines.append(f"| {shape}{small} | {mode} | {_cell_ms(get[FLOOR])} "
                             f"| {_cell_ms(o)} | {ratio} "
                             f"| {tfl} | {_cell_ms(get['torchvision'], o)} "
                             f"| {_cell_ms(get['deformops'], o)} "
                             f"| {_cell_ms(get[ND_R2], o)} | {peak} |")
    if notes:
        lines += ["", "Not measured:"]
        lines += [f"- {c}, {dtype}: {why}" for (c, dtype, why) in notes]
    return "\n".join(lines) + "\n"


def geomean(values):
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _ratios(rows, fn):
    """``fn(shape) -> ratio or None`` over the main shapes: (values, shapes with a value)."""
    shapes = [s for s in _shapes(rows) if any(r["shape"] == s and r.get("main") for r in rows)]
    vals = {s: fn(s) for s in shapes}
    return {s: v for s, v in vals.items() if v is not None}


def goals(rows) -> list:
    """Each goal: name, measured (geomean), target, comparison, met (True/False/None), shapes
    measured, per-shape values, note."""
    rows = bench_rows(rows)

    def ms(shape, c, dtype, mode):
        r = _find(rows, shape, c, dtype, mode)
        return r["median_ms"] if _ms(r) else None

    def tv16(shape):
        r = _torchvision_fp16_beside_bf16(rows, shape, "fwd+bwd")
        return r["median_ms"] if _ms(r) else None

    def ratio(a, b):
        return a / b if a is not None and b is not None else None

    def peak(shape):
        r = _find(rows, shape, OURS, "bfloat16", "fwd+bwd")
        return r.get("peak_ratio_to_conv2d") if _ms(r) else None

    bf = "bfloat16"
    specs = [
        ("forward / cuDNN conv2d (bf16)", "<=", 1.3,
         lambda s: ratio(ms(s, OURS, bf, "fwd"), ms(s, FLOOR, bf, "fwd")), ""),
        ("forward+backward / cuDNN conv2d (bf16)", "<=", 2.0,
         lambda s: ratio(ms(s, OURS, bf, "fwd+bwd"), ms(s, FLOOR, bf, "fwd+bwd")), ""),
        ("torchvision fwd+bwd (float16) / ours fwd+bwd (bf16)", ">=", 3.0,
         lambda s: ratio(tv16(s), ms(s, OURS, bf, "fwd+bwd")),
         "torchvision has no bfloat16 kernel: its float16 run is what a torchvision user "
         "trains with"),
        ("deformops forward / ours forward (bf16)", ">", 1.0,
         lambda s: ratio(ms(s, "deformops", bf, "fwd"), ms(s, OURS, bf, "fwd")), ""),
        ("deformops fwd+bwd / ours fwd+bwd (bf16)", ">", 1.0,
         lambda s: ratio(ms(s, "deformops", bf, "fwd+bwd"), ms(s, OURS, bf, "fwd+bwd")), ""),
        ("peak memory fwd+bwd / conv2d (bf16)", "<=", 1.2, peak, ""),
    ]
    res = []
    for name, op, target, fn, note in specs:
        per = _ratios(rows, fn)
        g = geomean(per.values())
        met = None if g is None else (g <= target if op == "<=" else
                                      g >= target if op == ">=" else g > target)
        extra = note
        if name.startswith("torchvision"):
            same = geomean(_ratios(rows, lambda s: ratio(
                ms(s, "torchvision", "float16", "fwd+bwd"),
                ms(s, OURS, "float16", "fwd+bwd"))).values())
            extra += (f"; same dtype (float16 vs float16): {same:.2f}x" if same else "")
        if name.startswith("peak") and per:
            extra += f"; largest ratio {max(per.values()):.2f}"
        if per and len(per) < MAIN_COUNT:
            extra += f"; only {len(per)} of {MAIN_COUNT} main shapes measured"
        res.append({"goal": name, "measured": g, "comparison": op, "target": target,
                    "met": met, "shapes": len(per), "per_shape": per, "note": extra.strip("; ")})
    return res


def goals_markdown(gs, dry=False) -> str:
    lines = ["| goal (geomean over the main shapes) | measured | target | met |",
             "|---|---|---|---|"]
    for g in gs:
        m = "no data" if g["measured"] is None else f"{g['measured']:.2f}"
        met = {True: "yes", False: "**no**", None: "no data"}[g["met"]]
        if g["met"] is not None and g["shapes"] < MAIN_COUNT:
            met += f" ({g['shapes']}/{MAIN_COUNT} shapes)"
        lines.append(f"| {g['goal']} | {m} | {g['comparison']} {g['target']} | {met} |")
    notes = [f"- {g['goal']}: {g['note']}" for g in gs if g["note"]]
    head = ["**DRY RUN: not a measurement.**", ""] if dry else []
    return "\n".join(head + lines + ([""] + notes if notes else [])) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="folder with run_gpu.py's STEP.json files")
    p.add_argument("--json", action="store_true", help="print the goals as JSON")
    a = p.parse_args(argv)
    rows = load_rows(a.results)
    if not rows:
        print(f"no rows in {a.results}", file=sys.stderr)
        return 1
    gs = goals(rows)
    if a.json:
        print(json.dumps(gs, indent=1))
        return 0
    dry = any(r.get("dry_run") for r in rows)
    print(markdown_tables(rows))
    print("Goals:\n")
    print(goals_markdown(gs, dry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
