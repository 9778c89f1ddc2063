"""The demo: a plain and a deformable CNN trained on digits under random geometry.

Run ``deformconv demo`` (or ``torchrun --nproc_per_node=N -m deformconv demo``). It writes,
under ``--out``: ``report.md``, ``results.json``, the sampling figures (PNG) and the trained
state dicts in ``models/``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import List, Optional

import torch

from .data import Digits, load_digits_split, place_on_canvas
from .model import build_model
from .train import finish, init_distributed, predict, steps_per_run, train_model

SCALE = (1.0, 3.4)
SMALL, LARGE = 1.5, 2.26  # outer thirds of the log-uniform scale range
TEST_SEED = 20240  # the test placement is fixed, whatever --seed says


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import _positive_int
    p.add_argument("--epochs", type=_positive_int, default=30, help="training epochs per run "
                   "(default 30)")
    p.add_argument("--seeds", type=_positive_int, default=2, help="how many seeds to train each network "
                   "with (default 2)")
    p.add_argument("--seed", type=int, default=0, help="first seed; runs use seed, seed+1, ... "
                   "(default 0)")
    p.add_argument("--out", default="deformconv-out", help="output folder (default "
                   "./deformconv-out)")
    p.add_argument("--device", default="auto", help="'auto' (GPU when there is one), 'cpu', "
                   "'cuda', 'cuda:1', ...")
    p.add_argument("--version", type=int, choices=(1, 2), default=2, help="deformable "
                   "convolution v1 or v2 (default 2)")
    p.add_argument("--width", type=_positive_int, default=32, help="channels of the last stage "
                   "(default 32)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="global batch size; "
                   "under torchrun it must divide by the number of processes (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="Adam, or SGD "
                   "with momentum 0.9 (default adam)")
    p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N "
                   "training and the first N held-out digits (for quick checks; each held-out "
                   "digit is placed twice, so 2N test images; default all)")
    p.add_argument("--threads", type=_positive_int, default=1, help="CPU threads per process (default "
                   "1: the layers are small, a second thread gained about 1.5x on an idle "
                   "machine and lost 2x on a busy one)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that need more than one argument or the machine; ``parser.error`` (exit 2)."""
    from ..cli import check_device
    check_device(parser, args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        parser.error(f"--batch-size: expected a multiple of the number of processes "
                     f"({world}, from torchrun), got {args.batch_size}")
    if args.limit is not None and args.limit < args.batch_size:
        parser.error(f"--limit: expected at least --batch-size ({args.batch_size}) digits, "
                     f"since incomplete batches are dropped, got {args.limit}")
    if not args.lr > 0:
        parser.error(f"--lr: expected a positive learning rate, got {args.lr}")


def demo_test_set(limit: int = 0):
    """The demo's fixed test images (``Placed``): every held-out digit (the first ``limit``
    of them when ``limit`` > 0) placed twice, under two different random placements drawn
    from a fixed seed, so ``2 * len(held-out digits)`` images, the same in every run."""
    _, test = load_digits_split(limit=limit)
    twice = Digits(test.images.repeat(2, 1, 1), test.labels.repeat(2))
    return place_on_canvas(twice, torch.Generator().manual_seed(TEST_SEED), scale=SCALE)


def _accuracies(pred: torch.Tensor, test) -> dict:
    ok = (pred == test.labels).float()
    small, large = test.scale < SMALL, test.scale >= LARGE
    return {"acc": ok.mean().item(), "acc_small": ok[small].mean().item(),
            "acc_large": ok[large].mean().item()}


def _spread(model, test) -> dict:
    """Spread of the composed sampling points at each test digit's centre, by digit size."""
    from .figures import sampling_spread
    sp = sampling_spread(model, test.images, test.centre)
    small, large = test.scale < SMALL, test.scale >= LARGE
    mid = ~small & ~large
    corr = torch.corrcoef(torch.stack((sp, test.scale)))[0, 1].item() if len(sp) > 1 else 0.0
    return {"spread_small": sp[small].mean().item(), "spread_mid": sp[mid].mean().item(),
            "spread_large": sp[large].mean().item(), "spread_scale_corr": corr}


def _figures(model, test, out: str) -> List[str]:
    from .figures import sampling_figure
    names = []
    for name, pick in (("sampling_small.png", test.scale < 1.25),
                       ("sampling_large.png", test.scale > 2.8)):
        idx = pick.nonzero().flatten()[:3]
        if len(idx) == 0:
            continue
        pred = predict(model, test._replace(images=test.images[idx], labels=test.labels[idx]),
                       next(model.parameters()).device)
        titles = [f"label {test.labels[i].item()}, predicted {p.item()}, "
                  f"scale x{test.scale[i].item():.2f}" for i, p in zip(idx, pred)]
        centres = [tuple(test.centre[i].tolist()) for i in idx]
        sampling_figure(model, test.images[idx], os.path.join(out, name), centres, titles)
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    """Train both networks for every seed, print and write the results."""
    if args.epochs < 1 or args.seeds < 1:
        raise ValueError(f"--epochs and --seeds must be >= 1, got {args.epochs} and "
                         f"{args.seeds}")
    dist = init_distributed(args.device)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    limit = args.limit or 0
    if dist.device.type == "cpu":
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train, _ = load_digits_split(limit=limit)
    test = demo_test_set(limit)
    if len(train.labels) < args.batch_size:
        raise ValueError(f"--batch-size must be at most the {len(train.labels)} training "
                         f"digits, got {args.batch_size}")
    if dist.main:
        os.makedirs(os.path.join(args.out, "models"), exist_ok=True)
        print(f"deformconv demo: {len(train.labels)} training digits (new placement every "
              f"epoch), {len(test.labels)} test images ({len(test.labels) // 2} held-out "
              f"digits, each placed twice), device {dist.device}, "
              f"{dist.world} process(es), {torch.get_num_threads()} thread(s) each")
    bar = None
    if dist.main and not args.no_progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as e:
            raise ImportError("the progress bar needs tqdm: pip install 'deformconv[demo]' "
                              "(or pass --no-progress)") from e
        bar = tqdm(total=2 * args.seeds * steps_per_run(train, args.epochs, args.batch_size),
                   unit="step", desc="training")
    runs, first_deformable = [], None
    for seed in range(args.seed, args.seed + args.seeds):
        for variant in ("plain", "deformable"):
            model, converted = build_model(variant == "deformable", args.version, args.width,
                                           seed)
            if bar is not None:
                bar.set_description(f"seed {seed} {variant}")
            t0 = time.perf_counter()
            train_model(model, train, args.epochs, seed, dist, args.batch_size, args.lr,
                        progress=bar, optimizer=args.optimizer)
            seconds = time.perf_counter() - t0
            r = {"seed": seed, "variant": variant, "seconds": seconds, "converted": converted}
            r.update(_accuracies(predict(model, test, dist.device), test))
            if variant == "deformable" and dist.main:
                r.update(_spread(model, test))
            runs.append(r)
            if dist.main:
                torch.save(model.state_dict(),
                           os.path.join(args.out, "models", f"{variant}_seed{seed}.pt"))
            if variant == "deformable" and first_deformable is None:
                first_deformable = model
    if bar is not None:
        bar.close()
    if dist.main:
        figures = [] if args.no_figures else _figures(first_deformable, test, args.out)
        settings = {"epochs": args.epochs, "seeds": f"{args.seed}..{args.seed + args.seeds - 1}",
                    "version": args.version, "width": args.width, "batch_size": args.batch_size,
                    "lr": args.lr, "optimizer": args.optimizer, "canvas": 32, "scale": SCALE,
                    "device": str(dist.device),
                    "threads": torch.get_num_threads() if dist.device.type == "cpu" else "-",
                    "processes": dist.world, "train_digits": len(train.labels),
                    "test_images": len(test.labels), "torch": torch.__version__}
        from .report import write_report
        write_report(os.path.join(args.out, "report.md"), settings, runs, figures)
        total = time.perf_counter() - t_start
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump({"settings": settings, "runs": runs, "seconds": total}, fh, indent=1)
        for v in ("plain", "deformable"):
            accs = ", ".join(f"{100 * r['acc']:.1f}%" for r in runs if r["variant"] == v)
            print(f"test accuracy {v:>10}: {accs} (seeds {settings['seeds']})")
        for r in runs:
            if "spread_small" in r:
                print(f"seed {r['seed']}: the deformable layers' 729 points spread "
                      f"{r['spread_small']:.1f} / {r['spread_mid']:.1f} / "
                      f"{r['spread_large']:.1f} px (rms) on small / medium / large digits "
                      f"(regular grid: 8.0 px); correlation with digit size "
                      f"{r['spread_scale_corr']:.2f}")
        print(f"report: {os.path.join(args.out, 'report.md')} ({total:.0f} s)")
    finish(dist)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="deformconv demo", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    validate(p, args)
    return run(args)


__all__ = ["add_arguments", "validate", "run", "main", "demo_test_set"]
