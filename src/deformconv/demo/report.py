"""The demo's numbers summarised over seeds, and its Markdown report."""

from __future__ import annotations

import statistics
from typing import Dict, List

#: Two-sided 95% Student-t quantiles by degrees of freedom (1 to 9; 1.96 beyond).
_T95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26]


def paired(xs: List[float]) -> Dict[str, object]:
    """Mean, standard deviation and 95% confidence half-width of per-seed differences, and
    whether the interval excludes zero (``separated``); one seed cannot separate anything.
    ``positive``: how many of the differences are above zero."""
    n = len(xs)
    mean = statistics.mean(xs)
    sd = statistics.stdev(xs) if n > 1 else float("nan")
    half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * sd / n ** 0.5 if n > 1 \
        else float("inf")
    return {"n": n, "mean": mean, "sd": sd, "ci95": half, "separated": abs(mean) > half,
            "positive": sum(x > 0 for x in xs)}


def _pm(xs: List[float], scale: float = 100, unit: str = "%") -> str:
    if len(xs) < 2:
        return f"{scale * xs[0]:.1f}{unit}"
    return f"{scale * statistics.mean(xs):.1f}{unit} ± {scale * statistics.stdev(xs):.1f}"


QUICK_NOTE = ("a --quick run (a few epochs) only checks that everything runs: its numbers "
              "carry no conclusion")


def summarize(runs: List[Dict], quick: bool = False) -> Dict[str, object]:
    """Over seeds: accuracy of both networks, their paired difference, and the receptive
    field's growth from small to large digits and from small digits to background. ``quick``
    (the ``--quick`` preset): no verdict, a line saying why instead."""
    plain = {r["seed"]: r for r in runs if r["variant"] == "plain"}
    deform = {r["seed"]: r for r in runs if r["variant"] == "deformable"}
    seeds = sorted(set(plain) & set(deform))
    acc = paired([deform[s]["acc"] - plain[s]["acc"] for s in seeds])
    growth = paired([deform[s]["spread_large"] - deform[s]["spread_small"] for s in seeds])
    bg = [deform[s]["spread_background"] - deform[s]["spread_small"] for s in seeds
          if deform[s]["spread_background"] == deform[s]["spread_background"]]
    background = paired(bg) if bg else None
    lines = [
        f"test accuracy over {len(seeds)} seeds: plain {_pm([plain[s]['acc'] for s in seeds])}, "
        f"deformable {_pm([deform[s]['acc'] for s in seeds])}; deformable minus plain "
        f"{100 * acc['mean']:+.1f} points (95% interval ± {100 * acc['ci95']:.1f}): "
        + ("no verdict" if quick else "separated from the seed spread" if acc["separated"]
           else "NOT separated from the seed spread"),
        f"receptive field (weighted spread, plain network 8.0 px): small digits "
        f"{_pm([deform[s]['spread_small'] for s in seeds], 1, ' px')}, large digits "
        f"{_pm([deform[s]['spread_large'] for s in seeds], 1, ' px')}, background "
        f"{_pm([deform[s]['spread_background'] for s in seeds], 1, ' px')}; large minus "
        f"small {growth['mean']:+.2f} px (95% interval ± {growth['ci95']:.2f}; positive in "
        f"{growth['positive']} of {growth['n']} seeds)"]
    if quick:
        lines.append(QUICK_NOTE)
    return {"seeds": seeds, "accuracy_difference": acc, "spread_growth": growth,
            "background_minus_small": background, "lines": lines}


def write_report(path, results: Dict) -> None:
    """Write ``report.md`` from the ``results`` dict the demo also saves as JSON."""
    st, runs, summary = results["settings"], results["runs"], results["summary"]
    files = results["figures"]["files"]
    plain = [r for r in runs if r["variant"] == "plain"]
    deform = [r for r in runs if r["variant"] == "deformable"]
    growth, acc = summary["spread_growth"], summary["accuracy_difference"]
    quick = st.get("preset") == "quick"
    lines = ["# deformconv demo: where deformable layers look, and what it buys", ""]
    if quick:
        lines += [f"**This is {QUICK_NOTE}. The verdicts below are left out; run "
                  "`deformconv demo` (or `--full`) for numbers that mean something.**", ""]
    lines += [
             "A small CNN is trained on scikit-learn's 8x8 handwritten digits, each placed on a "
             f"{st['canvas']}x{st['canvas']} canvas at a random size ({8 * st['scale'][0]:.0f} "
             f"to {8 * st['scale'][1]:.0f} px), rotation (±30°), shear (±0.3) and position, "
             "fresh every epoch. The same network is trained twice per seed, from the same "
             "initial weights on the same image stream: once plain, once with its last three "
             "3x3 convolutions made deformable (v"
             f"{st['version']}) by `convert_to_deformable`, which start as the same function. "
             f"Parameters: plain {st['parameters'].get('plain', '-')}, deformable "
             f"{st['parameters'].get('deformable', '-')} (the extra ones predict the offsets "
             "and masks).", ""]
    if "receptive_fields.png" in files:
        lines += ["## Where the deformable layers look", "",
                  "![receptive fields](receptive_fields.png)", "",
                  "For the location marked x, the three deformable layers read 9 x 9 x 9 = 729 "
                  "points, composed through the layers; each counts by the product of the "
                  "three layers' masks along its path. The orange heat map adds these weights "
                  "up: brighter is where the layers look most. The dashed circle's radius is "
                  "the weighted spread of the points: the size of the receptive field. Below "
                  "each picture, the plain network's fixed grid at the same place (size 8.0 "
                  "px). Points off the canvas read zeros; the captions count them.", ""]
        for c in results["figures"]["examples"]:
            cap = c["caption"].replace("\n", " ")
            lines.append(f"- {cap}: spread {c['spread']:.1f} px, {c['off_canvas']} of "
                         f"{c['points']} points off the canvas "
                         f"({100 * c['off_canvas_weight']:.0f}% of the weight)")
        lines.append("")
    lines += ["## Does the receptive field follow the digit's size?", ""]
    if "spread_vs_size.png" in files:
        lines += ["![spread against size](spread_vs_size.png)", ""]
    lines += ["Receptive field size (weighted spread, px) at each test digit's centre, mean over "
              "the test digits of each size class, and at background locations "
              f"({st['background_locations']} test images have one). The plain network reads "
              "the same grid everywhere: 8.0 px.", "",
              "| seed | small digits | medium | large digits | background | correlation with "
              "size |", "|---|---|---|---|---|---|"]
    for r in deform:
        lines.append(f"| {r['seed']} | {r['spread_small']:.2f} | {r['spread_mid']:.2f} | "
                     f"{r['spread_large']:.2f} | {r['spread_background']:.2f} | "
                     f"{r['spread_scale_corr']:.2f} |")
    grows = growth["separated"] and growth["mean"] > 0
    bg = summary["background_minus_small"]
    mean = {k: sum(r[k] for r in deform) / len(deform) for k in
            ("spread_small", "spread_large", "spread_background")}
    lines += ["", f"Large minus small digits: {growth['mean']:+.2f} px, 95% interval over seeds "
              f"± {growth['ci95']:.2f}" + ("." if quick else ": " + (
                  "the receptive field grows with the digit, separated from the seed spread"
                  if grows else "not separated from the seed spread")
                  + f" (larger on large digits in {growth['positive']} of {growth['n']} "
                  "seeds)."), ""]
    if bg is not None:
        largest = mean["spread_background"] > mean["spread_large"]
        lines += [f"Background: {mean['spread_background']:.2f} px against "
                  f"{mean['spread_small']:.2f} on small and {mean['spread_large']:.2f} on "
                  "large digits (means over seeds). " + ("" if quick else (
                      "As in the papers' figures, the field is largest on background. "
                      if largest else "Unlike the papers' figures, where the field is largest "
                      "on background, here it is not. ")) + (
                      f"Background minus small digits: {bg['mean']:+.2f} px, 95% interval "
                      f"± {bg['ci95']:.2f}" + ("." if bg["separated"] or quick else
                                               ", not separated from the seed spread.")), ""]
    lines += ["## Test accuracy", "",
              f"{st['test_images']} fixed test images (every held-out digit placed twice). "
              "Small: below 12 px; large: above 18 px.", "",
              "| seed | network | accuracy | small digits | large digits | training time |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['variant']} | {100 * r['acc']:.1f}% | "
                     f"{100 * r['acc_small']:.1f}% | {100 * r['acc_large']:.1f}% | "
                     f"{r['seconds']:.0f} s |")
    lines += ["", "| network | accuracy (mean ± sd over seeds) | small digits | large digits |",
              "|---|---|---|---|"]
    for name, rs in (("plain", plain), ("deformable", deform)):
        lines.append(f"| {name} | " + " | ".join(_pm([r[k] for r in rs]) for k in
                                                 ("acc", "acc_small", "acc_large")) + " |")
    lines += ["", f"Deformable minus plain, paired by seed: {100 * acc['mean']:+.1f} points, 95% "
              f"interval ± {100 * acc['ci95']:.1f}. "
              + ("(No verdict: --quick run.)" if quick else
                 "This difference is separated from the seed spread." if acc["separated"] else
                 "**This difference is not separated from the seed spread: these runs do not "
                 "show that either network is more accurate.**"), "",
              "Nothing was tuned for the deformable network: both use the same optimiser, "
              "learning rate, epochs and data. A short run on a small data set.", "",
              "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in st.items()]
    m = results["machine"]
    sec = results.get("seconds", {})
    if sec:
        lines.append(f"| run time | {sec['wall']:.0f} s wall, {sec['cpu_main_process']:.0f} s "
                     "CPU (training and evaluation, one process) |")
    lines += [f"| machine | {m.get('cpu')} ({m.get('vector_isa', 'vector ISA not recorded')}), "
              f"{m.get('cores')} cores |",
              f"| versions | python {m.get('python')}, torch {m.get('torch')}, deformconv "
              f"{m.get('deformconv')} |", f"| commit | {m.get('commit')} |", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
