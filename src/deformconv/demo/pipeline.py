"""The demo's pipeline: data, training of both networks for every seed, evaluation, figures,
report.

``deformconv demo`` (or ``torchrun --nproc_per_node=N -m deformconv demo``) calls ``run``. It
writes, under ``out``: ``report.md``, ``results.json``, the figures (PNG) and the trained state
dicts in ``models/``. The command line (``deformconv.commands.demo``) owns the arguments.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List

import torch

from .data import Digits, load_digits_split, place_on_canvas
from .model import build_model
from .train import finish, init_distributed, predict, steps_per_run, train_model

SCALE = (1.0, 3.4)
SMALL, LARGE = 1.5, 2.26  # outer thirds of the log-uniform scale range
TEST_SEED = 20240  # the test placement is fixed, whatever the seed
SIZE_BINS = 6  # log-spaced digit-size bins of the size-vs-spread plot
#: Settings of ``--quick``, the default and ``--full``: (seeds, epochs).
PRESETS = {"quick": (2, 3), "default": (3, 12), "full": (5, 30)}
DEFAULTS = dict(epochs=PRESETS["default"][1], seeds=PRESETS["default"][0], seed=0,
                out="deformconv-out", device="auto", version=2, width=32, batch_size=64,
                lr=2e-3, optimizer="adam", limit=None, threads=1, no_figures=False,
                no_progress=True, preset="default")


def demo_test_set(limit: int = 0):
    """The demo's fixed test images (``Placed``): every held-out digit (the first ``limit``
    of them when ``limit`` > 0) placed twice, under two different random placements drawn
    from a fixed seed, so ``2 * len(held-out digits)`` images, the same in every run."""
    _, test = load_digits_split(limit=limit)
    twice = Digits(test.images.repeat(2, 1, 1), test.labels.repeat(2))
    return place_on_canvas(twice, torch.Generator().manual_seed(TEST_SEED), scale=SCALE)


def size_bins() -> List[float]:
    """Edges of the digit-size bins (canvas px), log-spaced over the scale range."""
    lo, hi = math.log(8 * SCALE[0]), math.log(8 * SCALE[1])
    return [math.exp(lo + (hi - lo) * i / SIZE_BINS) for i in range(SIZE_BINS + 1)]


def _accuracies(pred: torch.Tensor, test) -> dict:
    ok = (pred == test.labels).float()
    small, large = test.scale < SMALL, test.scale >= LARGE
    return {"acc": ok.mean().item(), "acc_small": ok[small].mean().item(),
            "acc_large": ok[large].mean().item()}


def _evaluate(model, test, background: torch.Tensor) -> dict:
    """Accuracies, and the receptive field size at each test digit's centre (by digit size)
    and at the background locations ``background`` (Tensor[M, 2], NaN where none)."""
    from .figures import survey
    pred, (sp, bg_sp) = survey(model, test.images, [test.centre, background])
    r = _accuracies(pred, test)
    size = 8 * test.scale
    edges = size_bins()
    by_size = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        pick = (size >= lo) & (size < hi) if hi < edges[-1] else (size >= lo)
        by_size.append(sp[pick].mean().item() if pick.any() else float("nan"))
    small, large = test.scale < SMALL, test.scale >= LARGE
    mid = ~small & ~large
    corr = torch.corrcoef(torch.stack((sp, test.scale)))[0, 1].item() if len(sp) > 1 else 0.0
    bg_sp = bg_sp[~bg_sp.isnan()]
    r.update({"spread_small": sp[small].mean().item(), "spread_mid": sp[mid].mean().item(),
              "spread_large": sp[large].mean().item(), "spread_scale_corr": corr,
              "spread_by_size": by_size,
              "spread_background": bg_sp.mean().item() if len(bg_sp) else float("nan")})
    return r


def pick_examples(test, count: int = 2) -> List[List[int]]:
    """The examples of the first figure, by a fixed rule: in test order, the first ``count``
    small digits (scale < SMALL) and the first ``count`` large ones (scale >= LARGE) whose
    centre lies at least 8 px from every canvas edge and, for the small ones, that leave a
    background location. Returns rows ``[small, large]`` of test indices."""
    from .figures import background_locations
    S = test.images.shape[-1]
    inner = (test.centre.min(1).values >= 8) & (test.centre.max(1).values <= S - 9)
    has_bg = ~background_locations(test.images[:, 0])[:, 0].isnan()
    small = ((test.scale < SMALL) & inner & has_bg).nonzero().flatten().tolist()[:count]
    large = ((test.scale >= LARGE) & inner).nonzero().flatten().tolist()[:count]
    return [list(p) for p in zip(small, large)]


def _figures(model, test, out: str, spreads: List[dict]) -> Dict[str, object]:
    from ..viz import spread_plot
    from .figures import PLAIN_SPREAD, attention_figure, background_location
    pred = predict(model, test, next(model.parameters()).device)
    rows = []
    for small, large in pick_examples(test):
        img_s, img_l = test.images[small, 0], test.images[large, 0]

        def what(i):
            return (f"a {test.labels[i].item()}, {8 * test.scale[i].item():.0f} px "
                    f"(predicted {pred[i].item()})")
        rows.append([(img_s, tuple(test.centre[small].tolist()), "small digit: " + what(small)),
                     (img_l, tuple(test.centre[large].tolist()), "large digit: " + what(large)),
                     (img_s, background_location(img_s), "background, same image\n"
                      "as the small digit")])
    files, cells = [], []
    if rows:
        files.append("receptive_fields.png")
        cells = attention_figure(
            model, rows, os.path.join(out, "receptive_fields.png"),
            "Where the deformable layers read, for one location (x): small digit, large digit, "
            "background",
            note="Examples by a fixed rule: in test order, the first two small (below 12 px) "
                 "and large (above 18 px) digits centred at least 8 px from the canvas edge. "
                 "Background: the location farthest from the small digit with no ink within "
                 "4 px. Top of each pair: the trained deformable network (first seed); below: "
                 "the plain network's fixed grid at the same location and scale.")["cells"]
    edges = size_bins()
    centres = [math.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])]
    spread_plot(centres, [s["spread_by_size"] for s in spreads],
                [s["spread_background"] for s in spreads if not math.isnan(
                    s["spread_background"])], os.path.join(out, "spread_vs_size.png"),
                seeds=[s["seed"] for s in spreads], plain=PLAIN_SPREAD)
    return {"files": files + ["spread_vs_size.png"], "size_bin_centres": centres,
            "examples": cells}


def run(args) -> int:
    """Train both networks for every seed, print and write the results.

    ``args`` has the attributes of ``DEFAULTS`` (an ``argparse.Namespace`` from the command
    line, or ``SimpleNamespace(**{**DEFAULTS, ...})``).
    """
    dist = init_distributed(args.device)
    limit = args.limit or 0
    if dist.device.type == "cpu":
        torch.set_num_threads(args.threads)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    train, _ = load_digits_split(limit=limit)
    test = demo_test_set(limit)
    if len(train.labels) < args.batch_size:
        raise ValueError(f"batch_size must be at most the {len(train.labels)} training "
                         f"digits, got {args.batch_size}")
    if dist.main:
        os.makedirs(os.path.join(args.out, "models"), exist_ok=True)
        print(f"deformconv demo ({args.preset}: {args.seeds} seeds x {args.epochs} epochs): "
              f"{len(train.labels)} training digits (new placement every epoch), "
              f"{len(test.labels)} test images, device {dist.device}, {dist.world} "
              f"process(es), {torch.get_num_threads()} thread(s) each")
    bar = None
    if dist.main and not args.no_progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as e:
            raise ImportError("the progress bar needs tqdm: pip install 'deformconv[demo]' "
                              "(or pass --no-progress)") from e
        bar = tqdm(total=2 * args.seeds * steps_per_run(train, args.epochs, args.batch_size),
                   unit="step", desc="training")
    if dist.main:
        from .figures import background_locations
        background = background_locations(test.images[:, 0])
    runs, spreads, first_deformable, params = [], [], None, {}
    for seed in range(args.seed, args.seed + args.seeds):
        for variant in ("plain", "deformable"):
            model, converted = build_model(variant == "deformable", args.version, args.width,
                                           seed)
            params[variant] = sum(p.numel() for p in model.parameters())
            if bar is not None:
                bar.set_description(f"seed {seed} {variant}")
            t0 = time.perf_counter()
            train_model(model, train, args.epochs, seed, dist, args.batch_size, args.lr,
                        progress=bar, optimizer=args.optimizer)
            r = {"seed": seed, "variant": variant, "seconds": time.perf_counter() - t0,
                 "converted": converted}
            if variant == "deformable" and dist.main:
                r.update(_evaluate(model, test, background))
                spreads.append(r)
            else:
                r.update(_accuracies(predict(model, test, dist.device), test))
            runs.append(r)
            if dist.main:
                torch.save(model.state_dict(),
                           os.path.join(args.out, "models", f"{variant}_seed{seed}.pt"))
            if variant == "deformable" and first_deformable is None:
                first_deformable = model
    if bar is not None:
        bar.close()
    if dist.main:
        from ..bench.timing import machine_info
        figures = ({"files": []} if args.no_figures else
                   _figures(first_deformable, test, args.out, spreads))
        settings = {"preset": args.preset, "epochs": args.epochs,
                    "seeds": f"{args.seed}..{args.seed + args.seeds - 1}",
                    "version": args.version, "width": args.width, "batch_size": args.batch_size,
                    "lr": args.lr, "optimizer": args.optimizer, "canvas": 32, "scale": SCALE,
                    "device": str(dist.device),
                    "threads": torch.get_num_threads() if dist.device.type == "cpu" else "-",
                    "processes": dist.world, "train_digits": len(train.labels),
                    "test_images": len(test.labels),
                    "background_locations": int((~background[:, 0].isnan()).sum()),
                    "parameters": params}
        from .report import summarize, write_report
        summary = summarize(runs, quick=args.preset == "quick")
        results = {"settings": settings, "machine": machine_info(), "runs": runs,
                   "summary": summary, "figures": figures,
                   "seconds": {"wall": time.perf_counter() - t_start,
                               "cpu_main_process": time.process_time() - cpu_start}}
        write_report(os.path.join(args.out, "report.md"), results)
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump(results, fh, indent=1)
        for line in summary["lines"]:
            print(line)
        print(f"report: {os.path.join(args.out, 'report.md')} "
              f"({results['seconds']['wall']:.0f} s)")
    finish(dist)
    return 0


__all__ = ["run", "demo_test_set", "pick_examples", "size_bins", "DEFAULTS", "PRESETS", "SCALE",
           "SMALL", "LARGE", "TEST_SEED", "SIZE_BINS"]
