"""``deformconv kernels``: every shipped Triton kernel, configuration and dtype compiles offline
for sm_90a and sm_80 without register spills (Triton's wheel ships ``ptxas``; no GPU)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from deformconv.commands import kernels as command  # noqa: E402

COLUMNS = {"kernel", "config", "dtype", "arch", "registers", "spill_bytes", "shared_bytes",
           "tensor_cores"}


def _rows(arch):
    """The report's rows, compiled in a process of its own: the compiler needs
    ``TRITON_INTERPRET`` unset, and a fresh process leaves this session's Triton untouched."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    r = subprocess.run([sys.executable, "-m", "deformconv.commands.kernels", "--arch", arch,
                        "--json"], env=env, capture_output=True, text=True, timeout=3000)
    if r.returncode != 0 and ("has no attribute" in r.stderr or "ImportError" in r.stderr):
        pytest.skip(f"this Triton cannot compile offline: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_no_register_spills(arch):
    rows = _rows(arch)
    kernels = {r["kernel"] for r in rows}
    assert {"deform_conv2d_fwd", "deform_conv2d_bwd_data",
            "deform_conv2d_bwd_weight"} <= kernels
    assert {r["dtype"] for r in rows} == {"fp32", "tf32", "fp16", "bf16"}
    assert {r["config"].rsplit(",", 1)[1] for r in rows} == {"i32", "i64"}
    for r in rows:
        assert set(r) == COLUMNS and r["arch"] == arch
        assert 0 < r["registers"] <= 255 and r["shared_bytes"] > 0
    spilling = [f"{r['kernel']} {r['config']} {r['dtype']}: {r['spill_bytes']} B"
                for r in rows if r["spill_bytes"]]
    assert not spilling, "\n".join(spilling)
    # Half precision runs on tensor cores: wgmma on Hopper, mma on Ampere.
    half = {r["tensor_cores"] for r in rows if r["dtype"] in ("fp16", "bf16")}
    assert half <= ({"wgmma", "mma"} if arch == "sm_90a" else {"mma"}) and half


def test_command_contract():
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--arch", "sm_80", "--json"])
    assert command.NAME == "kernels" and args.arch == "sm_80" and args.json
    assert isinstance(command.HELP, str) and "\n" not in command.HELP
    with pytest.raises(SystemExit):
        parser.parse_args(["--arch", "sm_70"])


def test_report_rejects_unknown_arch_and_interpreter(monkeypatch):
    from deformconv.ops.triton import report

    with pytest.raises(ValueError, match="arch must be one of .* got 'sm_75'"):
        report.resource_rows("sm_75")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        report.resource_rows("sm_80")


def test_registration_hook_finds_every_kernel_module():
    from deformconv.ops.triton import kernels, report

    specs = report.kernel_specs()
    assert [s.name for s in specs if s.fn in {k.fn for k in kernels.KERNEL_SPECS}] == \
        [s.name for s in kernels.KERNEL_SPECS]
