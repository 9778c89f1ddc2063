"""The benchmark suite: contenders compute the same function, and `deformconv bench` runs."""

from __future__ import annotations

import json

import pytest
import torch

from deformconv.bench import cpu
from deformconv.bench.contenders import CONTENDERS, label, problem
from deformconv.cli import main
from deformconv.testing import assert_close


@pytest.mark.parametrize("p", [problem(2, 4, 9, 8, 6), problem(1, 6, 7, 7, 4, stride=2),
                               problem(1, 8, 9, 10, 4, dilation=2, padding=2, offset_groups=2)],
                         ids=["plain", "stride2", "dilation2-og2"])
def test_contenders_agree(p):
    want = CONTENDERS["deformconv"](p)["forward"]()
    for name in ("conv2d", "grid_sample+matmul", "onnxruntime"):
        got = CONTENDERS[name](p)["forward"]
        if got is None:
            continue
        got = got()
        got = torch.as_tensor(got[0] if isinstance(got, list) else got)
        if name == "conv2d":
            assert got.shape == want.shape  # same shape, different function (no sampling)
        else:
            assert_close(got, want, name=name)


def test_bench_command_writes_results(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--quick", "--repeats", "1", "--threads", "1", "--out",
                 str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"cpu", "threads", "torch", "commit", "deformconv"} <= set(res["machine"])
    seen = {(r["shape"], r["contender"], r["mode"]) for r in res["rows"]}
    for p in cpu.QUICK:
        want = {("conv2d", "forward"), ("deformconv", "forward"), ("deformconv", "train"),
                ("grid_sample+matmul", "train")}
        assert {(label(p), c, m) for c, m in want} <= seen
    # Each ratio is the row's median over the floor's median of the same shape and mode.
    floor = {(r["shape"], r["mode"]): r["median_ms"] for r in res["rows"]
             if r["contender"] == "conv2d"}
    for r in res["rows"]:
        assert r["repeats"] == 1 and r["min_ms"] <= r["median_ms"]
        # Both rounded to 3 decimals.
        assert r["ratio_to_conv2d"] == pytest.approx(
            r["median_ms"] / floor[(r["shape"], r["mode"])], rel=1e-2, abs=1e-2)
    # Input plus output gradient of the first quick shape, float32.
    p = cpu.QUICK[0]
    assert res["memory"]["input_plus_output_bytes"] == 4 * (
        p.N * p.C * p.size[0] * p.size[1] + p.N * p.O * p.out[0] * p.out[1])
    assert "geomean over main shapes" in capsys.readouterr().out


def test_bench_rejects_unknown_contender(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", "--contenders", "conv2d,nonsense"])
    assert e.value.code == 2
    assert "--contenders" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--repeats", "0"], ["--repeats", "positive integer", "0"]),
    (["--warmup", "-1"], ["--warmup", ">= 0", "-1"]),
    (["--threads", "0"], ["--threads", "positive integer", "0"])])
def test_bench_rejects_bad_counts(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(w in err for w in words), err
