"""Loads a state dict saved by `deformconv demo` and draws, for one location, the 729 input
positions its three last 3x3 layers read (composed, weighted by their masks) beside the plain
network's fixed grid, and the same at a background location when the image has one. Writes
visualize-<image>.png into --out."""

from __future__ import annotations

import argparse
import os

from ._args import make_folder, non_negative_int, positive_int

NAME = "visualize"
HELP = ("draw where a demo model's deformable layers read on an image (a PNG in the output "
        "folder)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=os.path.join("deformconv-out", "models",
                                                   "deformable_seed0.pt"),
                   help="state dict saved by the demo (default "
                   "deformconv-out/models/deformable_seed0.pt)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="an image file (PNG, ...): its longer side is resized to "
                     "the canvas and the shorter one padded (aspect ratio kept); a light "
                     "background is inverted")
    src.add_argument("--index", type=non_negative_int, default=0, help="a demo test image "
                     "instead (default 0)")
    p.add_argument("--pixel", type=float, nargs=2, metavar=("Y", "X"), help="canvas position "
                   "to trace, within the canvas (default: the image's centre of mass)")
    p.add_argument("--canvas", type=positive_int, default=32, help="canvas size for --image "
                   "(default 32)")
    p.add_argument("--out", default="deformconv-out", help="output folder, created if needed "
                   "(default ./deformconv-out)")


def run(args: argparse.Namespace) -> int:
    from ..demo.figures import visualize_files

    parser = args.parser
    if args.image is not None and not os.path.isfile(args.image):
        what = "is a folder" if os.path.isdir(args.image) else "does not exist"
        parser.error(f"--image: expected an image file, got {args.image!r}, which {what}")
    if args.canvas % 4:
        parser.error(f"--canvas: expected a multiple of 4 (the network pools twice by 2), "
                     f"got {args.canvas}")
    if args.image is None and args.canvas != 32:
        parser.error(f"--canvas: only applies to --image (the demo's test images are 32x32), "
                     f"got {args.canvas} without --image")
    if args.out.lower().endswith(".png"):
        parser.error(f"--out: expected a folder (the PNG inside is named after the image), "
                     f"got {args.out!r}")
    canvas = args.canvas if args.image is not None else 32
    if args.pixel is not None and not all(0 <= c <= canvas - 1 for c in args.pixel):
        parser.error(f"--pixel: expected Y X within the {canvas}x{canvas} canvas "
                     f"(0 to {canvas - 1}; feature map {canvas // 4}x{canvas // 4}, "
                     f"feature pixel p at 4p + 1.5), got {args.pixel[0]:g} {args.pixel[1]:g}")
    make_folder(parser, "--out", args.out)
    try:
        result = visualize_files(args.model, args.out, args.image, args.index, args.pixel,
                                 canvas)
    except ValueError as e:  # names the argument
        parser.error(str(e))
    if result["note"] is not None:
        print(result["note"])
    y, x = result["traced"]
    print(f"traced at ({y:g}, {x:g}), the nearest feature pixel to "
          + ("the ink's centre of mass" if args.pixel is None else
             f"({args.pixel[0]:g}, {args.pixel[1]:g})"))
    if result["background"] is None:
        print("no background location (no feature pixel far enough from the ink): drew the "
              "traced location only")
    print(f"wrote {result['path']}")
    return 0
