"""TorchScript: torch.jit.script stops with one clear error on every layer (also inside a
larger model); torch.jit.trace works, and the traced module saves, loads (in a fresh process
too) and computes what the layer computes, also at another input size."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import deformconv as d

ROIS = torch.tensor([[0., 0, 0, 5, 5], [1., 1.5, 0.5, 7, 6]])


def _layers():
    """(layer, example inputs at one size, inputs at another size) for every layer class."""
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g)

    def moved(layer):  # offset predictors that really move the samples
        with torch.no_grad():
            layer.conv_offset.weight.normal_(0, 0.3, generator=g)
        return layer

    return [
        (moved(d.DeformConv2dPack(4, 4, 3, padding=1)), (r(2, 4, 8, 8),), (r(1, 4, 6, 9),)),
        (moved(d.ModulatedDeformConv2dPack(4, 4, 3, padding=1)), (r(2, 4, 8, 8),),
         (r(1, 4, 6, 9),)),
        (d.DeformConv2d(4, 4, 3, padding=1), (r(2, 4, 8, 8), r(2, 18, 8, 8)),
         (r(1, 4, 6, 9), r(1, 18, 6, 9))),
        (moved(d.DeformConv1dPack(4, 4, 3, padding=1)), (r(2, 4, 8),), (r(1, 4, 11),)),
        (moved(d.ModulatedDeformConv1dPack(4, 4, 3, padding=1)), (r(2, 4, 8),), (r(1, 4, 11),)),
        (d.DeformConv1d(4, 4, 3, padding=1), (r(2, 4, 8), r(2, 3, 8)),
         (r(1, 4, 11), r(1, 3, 11))),
        (moved(d.DeformConv3dPack(2, 2, 3, padding=1)), (r(1, 2, 4, 5, 4),), (r(2, 2, 3, 4, 6),)),
        (moved(d.ModulatedDeformConv3dPack(2, 2, 3, padding=1)), (r(1, 2, 4, 5, 4),),
         (r(2, 2, 3, 4, 6),)),
        (d.DeformConv3d(2, 2, 3, padding=1), (r(1, 2, 4, 5, 4), r(1, 81, 4, 5, 4)),
         (r(2, 2, 3, 4, 6), r(2, 81, 3, 4, 6))),
        (d.DeformRoIPool(2, sampling_ratio=2), (r(2, 4, 8, 8), ROIS, 0.1 * r(2, 2, 2, 2)),
         (r(2, 4, 9, 7), ROIS[:1], 0.1 * r(1, 2, 2, 2))),
        (d.DeformRoIPoolPack(2, 4, 8), (r(2, 4, 8, 8), ROIS), (r(2, 4, 9, 7), ROIS[[1, 0, 1]])),
        (d.ModulatedDeformRoIPoolPack(2, 4, 8), (r(2, 4, 8, 8), ROIS),
         (r(2, 4, 9, 7), ROIS[[1, 0, 1]])),
    ]


LAYERS = _layers()
IDS = [type(m).__name__ for m, _, _ in LAYERS]


def _no_jit_deprecation():
    """torch 2.13 warns that torch.jit is deprecated; the tests check what works."""
    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=Warning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_script_raises_one_clear_error(case):
    layer = case[0]
    name = type(layer).__name__
    with warnings.catch_warnings():
        _no_jit_deprecation()
        for model in (layer, nn.Sequential(nn.Identity(), nn.Sequential(layer))):
            with pytest.raises(RuntimeError) as e:
                torch.jit.script(model)
            msg = str(e.value)
            assert type(e.value).__name__ == "NotScriptableError", msg
            assert msg.startswith(f"{name} cannot be compiled by torch.jit.script"), msg
            assert "torch.jit.trace" in msg and "torch.export" in msg


@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_trace_save_load(case, tmp_path):
    layer, example, other = case
    layer.eval()
    with warnings.catch_warnings():
        _no_jit_deprecation()
        traced = torch.jit.trace(layer, example)
        torch.jit.save(traced, str(tmp_path / "m.pt"))
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        for args in (example, other):
            want = layer(*args)
            assert want.abs().sum() > 0
            torch.testing.assert_close(loaded(*args), want, rtol=1e-6, atol=1e-6)
    assert "deformconv::" in loaded.code or "deformconv." in loaded.code


def test_traced_module_loads_in_a_fresh_process(tmp_path):
    layer = d.ModulatedDeformConv2dPack(3, 4, 3, padding=1).eval()
    x = torch.randn(1, 3, 7, 7)
    with warnings.catch_warnings():
        _no_jit_deprecation()
        torch.jit.save(torch.jit.trace(layer, (x,)), str(tmp_path / "m.pt"))
    torch.save({"x": x, "y": layer(x).detach()}, str(tmp_path / "io.pt"))
    code = ("import sys, torch, deformconv; m = torch.jit.load(sys.argv[1]); "
            "io = torch.load(sys.argv[2]); "
            "torch.testing.assert_close(m(io['x']), io['y']); print('ok')")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(d.__file__)))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(tmp_path / "m.pt"),
                          str(tmp_path / "io.pt")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
