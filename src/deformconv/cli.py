"""The deformconv command line: check, info, bench, demo, visualize."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _int_at_least(minimum: int, what: str):
    """argparse type: an integer >= ``minimum`` (the error names what was given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """``parser.error`` (exit 2) when ``--device name`` asks for a device this machine lacks."""
    import torch
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {name} requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            parser.error(f"--device {name} requested but only {torch.cuda.device_count()} "
                         f"CUDA device(s) are visible")
    elif dev.type != "cpu":
        parser.error(f"--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")


def _check(args: argparse.Namespace) -> int:
    """Build a v2 layer, run forward and backward on random data, compare with the oracle."""
    import torch

    from . import ModulatedDeformConv2dPack
    from .reference import deform_conv2d_ref

    from .ops import deform_conv2d

    torch.manual_seed(args.seed)
    layer = ModulatedDeformConv2dPack(8, 16, 3, padding=1, offset_groups=2).double()
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.3)  # make it really deform
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    print(f"ModulatedDeformConv2dPack(8, 16, 3, padding=1, offset_groups=2): {tuple(x.shape)}"
          f" -> {tuple(y.shape)}, forward and backward ran")

    # The op against the oracle: output and the gradients of all five inputs.
    offset, mask = (t.detach().requires_grad_() for t in layer.offset_and_mask(x))
    ins = [x.detach().requires_grad_(), offset, layer.weight, layer.bias, mask]
    ours = deform_conv2d(*ins[:4], 1, 1, 1, ins[4])
    ref = deform_conv2d_ref(*ins[:4], 1, 1, 1, ins[4])
    grad = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, ins, grad)
    g_ref = torch.autograd.grad(ref, ins, grad)

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

    err = rel(ours, ref)
    print(f"max relative error vs the float64 loop reference: output {err:.1e}")
    names = ["input", "offset", "weight", "bias", "mask"]
    gerrs = [rel(a, b) for a, b in zip(g_ours, g_ref)]
    print("  gradients: " + ", ".join(f"{n} {e:.1e}" for n, e in zip(names, gerrs)))
    gerr = max(gerrs)
    ok = err < 1e-9 and gerr < 1e-9
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _info(args: argparse.Namespace) -> int:
    """Versions, and which kernel each device would run here."""
    import importlib
    import platform

    import torch

    from . import __version__

    def version(module: str) -> str:
        try:
            return getattr(importlib.import_module(module), "__version__", "installed")
        except Exception as e:  # missing, or fails to load with this torch
            return f"not available ({type(e).__name__})"

    print(f"deformconv {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("kernels:")
    print("  cpu:  pure PyTorch (embedding_bag sampling + oneDNN/BLAS convolution)")
    triton = version("triton")
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        kind = ("Triton fused kernels" if not triton.startswith("not")
                else "pure PyTorch (install the 'triton' extra for the fused kernels)")
        print(f"  cuda: {kind} on {gpu}")
    else:
        print("  cuda: no GPU visible")
    print(f"optional packages: triton {triton}, onnxruntime {version('onnxruntime')}, "
          f"onnx {version('onnx')}, matplotlib {version('matplotlib')}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run, validate
    validate(args.parser, args)
    return run(args)


def _load_image(path: str, canvas: int):
    """A grey image file as Tensor[1, 1, canvas, canvas] in [0, 1], dark background."""
    import torch
    from torch.nn import functional as F
    try:
        import matplotlib.image as mpimg
    except ImportError as e:
        raise ImportError("reading images needs matplotlib: pip install 'deformconv[plots]'") \
            from e
    a = torch.tensor(mpimg.imread(path), dtype=torch.float32)
    if a.dim() == 3:
        a = a[..., :3].mean(-1)
    if a.max() > 1:
        a = a / 255.0
    if a.mean() > 0.5:  # dark strokes on a light page: invert, the demo's digits are light
        a = 1 - a
    return F.interpolate(a[None, None], size=(canvas, canvas), mode="bilinear",
                         antialias=True, align_corners=False).clamp(0, 1)


def _load_model(parser: argparse.ArgumentParser, path: str):
    """The demo network saved at ``path``, or ``parser.error`` saying what is wrong with it."""
    import torch

    from .demo.model import model_from_state_dict

    if not os.path.isfile(path):
        parser.error(f"--model: no model at {path!r}; run `deformconv demo` first or pass "
                     f"--model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or pickles more than tensors
        parser.error(f"--model: expected a state dict saved by `deformconv demo`, got "
                     f"{path!r}, which torch.load cannot read ({type(e).__name__})")
    if not isinstance(state, dict) or "head.weight" not in state:
        parser.error(f"--model: expected a state dict saved by `deformconv demo`, got "
                     f"{path!r}, which holds a {type(state).__name__} without 'head.weight'")
    if not any(k.endswith("conv_offset.weight") for k in state):
        parser.error(f"--model: {path!r} is a plain demo network without deformable layers "
                     f"(it samples the regular grid); pass a deformable_seedN.pt")
    try:
        return model_from_state_dict(state)
    except Exception as e:  # right keys, wrong shapes
        parser.error(f"--model: expected a state dict saved by `deformconv demo`, got "
                     f"{path!r}, which does not load into the demo network "
                     f"({type(e).__name__})")


def _visualize(args: argparse.Namespace) -> int:
    """Draw where the demo network's last stage samples on one image."""
    import torch

    from .demo.figures import centre_of_mass, sampling_figure

    parser = args.parser
    if args.image is not None and not os.path.isfile(args.image):
        parser.error(f"--image: expected an image file, got {args.image!r}, which does not "
                     f"exist")
    if args.canvas % 4:
        parser.error(f"--canvas: expected a multiple of 4 (the network pools twice by 2), "
                     f"got {args.canvas}")
    canvas = args.canvas if args.image is not None else 32
    if args.pixel is not None and not all(0 <= c <= canvas - 1 for c in args.pixel):
        parser.error(f"--pixel: expected Y X within the {canvas}x{canvas} canvas "
                     f"(0 to {canvas - 1}; feature map {canvas // 4}x{canvas // 4}, "
                     f"feature pixel p at 4p + 1.5), got {args.pixel[0]:g} {args.pixel[1]:g}")
    model = _load_model(parser, args.model)
    if args.image:
        try:
            image = _load_image(args.image, args.canvas)
        except ImportError:
            raise
        except Exception as e:  # not an image matplotlib can read
            parser.error(f"--image: expected an image file (PNG, ...), got {args.image!r}, "
                         f"which cannot be read ({type(e).__name__}: {e})")
        title = os.path.basename(args.image)
    else:
        from .demo import demo_test_set
        placed = demo_test_set()
        if not 0 <= args.index < len(placed.labels):
            parser.error(f"--index: expected an index in [0, {len(placed.labels)}), got "
                         f"{args.index}")
        image = placed.images[args.index:args.index + 1]
        title = (f"demo test image {args.index} (label {placed.labels[args.index].item()}, "
                 f"scale x{placed.scale[args.index].item():.2f})")
    centre = tuple(args.pixel) if args.pixel else centre_of_mass(image[0, 0])
    folder = os.path.dirname(args.out)
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            parser.error(f"--out: cannot create the folder {folder!r} ({e.strerror})")
    with torch.no_grad():
        pred = model(image).argmax(1).item()
    path = sampling_figure(model, image, args.out, [centre], [f"{title}, predicted {pred}"])
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deformconv", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run a deformable layer forward and backward on random "
                       "data and compare it with the float64 reference",
                       description="Runs a v2 deformable layer forward and backward on random "
                       "float64 data and compares the op's output and the gradients of all "
                       "five inputs with the float64 loop reference; prints the relative "
                       "errors and OK or MISMATCH (exit code 1).")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.set_defaults(func=_check)
    b = sub.add_parser("bench", help="CPU benchmark: deformconv against nn.Conv2d (the floor), "
                       "onnxruntime, torchvision and a grid_sample baseline, alternating in one "
                       "process; medians and ratios, optionally saved as JSON",
                       description="Times deformconv's forward and forward+backward on the "
                       "CPU against nn.Conv2d of the same shape (the floor every ratio is "
                       "taken against), onnxruntime, torchvision and a grid_sample baseline, "
                       "alternating in one process, and measures forward peak memory; prints "
                       "medians and ratios and, with --out, writes them as JSON.")
    from .bench import add_arguments, run_cli
    add_arguments(b)
    b.set_defaults(func=run_cli, parser=b)
    i = sub.add_parser("info", help="versions and available kernels",
                       description="Prints the versions of deformconv, Python and torch, the "
                       "CPU thread count, which kernel the CPU and the GPU (if any) would run, "
                       "and the versions of the optional packages.")
    i.set_defaults(func=_info)

    from .demo import add_arguments
    d = sub.add_parser("demo", help="train a plain and a deformable CNN on digits under random "
                       "scale, rotation and shear; write accuracies, figures and a report",
                       description="Trains a small CNN twice per seed on scikit-learn's digits "
                       "placed on a 32x32 canvas under random geometry: plain, and with its "
                       "last three 3x3 convolutions deformable. Prints both test accuracies "
                       "and writes report.md, figures and state dicts to --out. Under "
                       "`torchrun --nproc_per_node=N -m deformconv demo` it trains with "
                       "DistributedDataParallel (gloo on CPU, NCCL on GPU).")
    add_arguments(d)
    d.set_defaults(func=_demo, parser=d)

    v = sub.add_parser("visualize", help="draw where a demo model's deformable layers sample "
                       "on an image, to a PNG",
                       description="Loads a state dict saved by `deformconv demo` and draws, "
                       "for one feature pixel, the 729 input positions its three last 3x3 "
                       "layers read (composed), beside the regular grid.")
    v.add_argument("--model", default=os.path.join("deformconv-out", "models",
                                                   "deformable_seed0.pt"),
                   help="state dict saved by the demo (default "
                   "deformconv-out/models/deformable_seed0.pt)")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--image", help="an image file (PNG, ...), resized to the canvas; "
                     "a light background is inverted")
    src.add_argument("--index", type=_non_negative_int, default=0, help="a demo test image instead "
                     "(default 0)")
    v.add_argument("--pixel", type=float, nargs=2, metavar=("Y", "X"), help="canvas position "
                   "to trace, within the canvas (default: the image's centre of mass)")
    v.add_argument("--canvas", type=_positive_int, default=32, help="canvas size for --image "
                   "(default 32)")
    v.add_argument("--out", default="sampling.png", help="PNG to write; its folder is "
                   "created (default sampling.png)")
    v.set_defaults(func=_visualize, parser=v)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
