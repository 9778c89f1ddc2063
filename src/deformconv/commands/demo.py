"""Trains a small CNN twice per seed on scikit-learn's digits placed on a 32x32 canvas under random
geometry: plain, and with its last three 3x3 convolutions deformable. Prints both test
accuracies and the receptive field sizes, and writes report.md, results.json, figures and state
dicts to --out. Presets: --quick (2 seeds x 3 epochs, a check that it runs), default (3 seeds x
12 epochs, about 3 minutes of CPU time on 2 cores), --full (5 seeds x 30 epochs). Under
`torchrun --nproc_per_node=N -m deformconv demo` it trains with DistributedDataParallel (gloo on
CPU, NCCL on GPU)."""

from __future__ import annotations

import argparse
import os

from ._args import check_device, make_folder, positive_float, positive_int

NAME = "demo"
HELP = ("train a plain and a deformable CNN on digits under random scale, rotation and shear; "
        "write pictures of where the deformable layers look, accuracies and a report")


def add_arguments(p: argparse.ArgumentParser) -> None:
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_const", const="quick", dest="preset",
                        help="2 seeds x 3 epochs: checks that everything runs (under a minute)")
    preset.add_argument("--full", action="store_const", const="full", dest="preset",
                        help="5 seeds x 30 epochs: the numbers with the least seed noise")
    p.set_defaults(preset="default")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs per run "
                   "(default: 12; --quick 3, --full 30)")
    p.add_argument("--seeds", type=positive_int, default=None, help="how many seeds to train "
                   "each network with (default: 3; --quick 2, --full 5)")
    p.add_argument("--seed", type=int, default=0, help="first seed; runs use seed, seed+1, ... "
                   "(default 0)")
    p.add_argument("--out", default="deformconv-out", help="output folder (default "
                   "./deformconv-out)")
    p.add_argument("--device", default="auto", help="'auto' (GPU when there is one), 'cpu', "
                   "'cuda', 'cuda:1', ...")
    p.add_argument("--version", type=int, choices=(1, 2), default=2, help="deformable "
                   "convolution v1 or v2 (default 2)")
    p.add_argument("--width", type=positive_int, default=32, help="channels of the last stage "
                   "(default 32)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="global batch size; "
                   "under torchrun it must divide by the number of processes (default 64)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="learning rate (default "
                   "2e-3)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="Adam, or SGD "
                   "with momentum 0.9 (default adam)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N "
                   "training and the first N held-out digits (for quick checks; each held-out "
                   "digit is placed twice, so 2N test images; default all)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads per process "
                   "(default 1: the layers are small, a second thread gained about 1.5x on an "
                   "idle machine and lost 2x on a busy one)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..demo import PRESETS
    from ..demo import run as run_demo

    parser = args.parser
    check_device(parser, args.device)
    seeds, epochs = PRESETS[args.preset]
    args.seeds = args.seeds or seeds
    args.epochs = args.epochs or epochs
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        parser.error(f"--batch-size: expected a multiple of the number of processes "
                     f"({world}, from torchrun), got {args.batch_size}")
    if args.limit is not None and args.limit < args.batch_size:
        parser.error(f"--limit: expected at least --batch-size ({args.batch_size}) digits, "
                     f"since incomplete batches are dropped, got {args.limit}")
    if int(os.environ.get("RANK", "0")) == 0:
        make_folder(parser, "--out", args.out)
        make_folder(parser, "--out", os.path.join(args.out, "models"))
    return run_demo(args)
