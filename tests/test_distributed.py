"""Two CPU processes under torchrun (gloo, DDP) train the same weights as one process."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed

import deformconv
from deformconv.cli import main

ARGS = ["--epochs", "1", "--seeds", "1", "--limit", "96", "--batch-size", "32", "--no-figures",
        "--no-progress", "--device", "cpu", "--optimizer", "sgd", "--lr", "0.05"]
# SGD: Adam's division by the gradient's magnitude would amplify float rounding where a
# gradient is about Adam's eps, a property of Adam, not of the data parallelism under test.


@pytest.mark.skipif(not torch.distributed.is_available()
                    or not torch.distributed.is_gloo_available(), reason="no gloo backend")
def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(deformconv.__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "deformconv", "demo", *ARGS, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 process(es)" in proc.stdout

    torch.set_num_threads(1)
    assert main(["demo", *ARGS, "--out", str(tmp_path / "one")]) == 0
    for variant in ("plain", "deformable"):
        ddp = torch.load(tmp_path / "ddp" / "models" / f"{variant}_seed0.pt")
        one = torch.load(tmp_path / "one" / "models" / f"{variant}_seed0.pt")
        assert ddp.keys() == one.keys()
        torch.manual_seed(0)
        fresh = deformconv.demo.model.build_model(variant == "deformable", 2, 32, 0)[0]
        moved = 0.0
        for k in one:
            torch.testing.assert_close(ddp[k], one[k], rtol=1e-6, atol=1e-6, msg=k)
            moved = max(moved, (one[k] - fresh.state_dict()[k]).abs().max().item())
        assert moved > 1e-4  # training really changed the weights (3 steps)
        if variant == "deformable":
            assert one["features.10.conv_offset.weight"].abs().max() > 0
