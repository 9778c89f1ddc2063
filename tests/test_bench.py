"""The benchmark suite: contenders compute the same function, and `deformconv bench` runs."""

from __future__ import annotations

import json

import pytest
import torch

from deformconv.bench.contenders import CONTENDERS, Problem
from deformconv.cli import main


@pytest.mark.parametrize("problem", [Problem(2, 4, 9, 8, 6), Problem(1, 6, 7, 7, 4, stride=2),
                                     Problem(1, 8, 9, 10, 4, dilation=2, padding=2,
                                             offset_groups=2)],
                         ids=["plain", "stride2", "dilation2-og2"])
def test_contenders_agree(problem):
    want = CONTENDERS["deformconv"](problem)["forward"]()
    assert want.abs().max() > 0
    for name in ("conv2d", "grid_sample+matmul", "onnxruntime"):
        got = CONTENDERS[name](problem)["forward"]
        if got is None:
            continue
        got = got()
        got = torch.as_tensor(got[0] if isinstance(got, list) else got)
        if name == "conv2d":
            assert got.shape == want.shape  # same shape, different function (no sampling)
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)


def test_bench_command_writes_results(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--quick", "--repeats", "1", "--threads", "1", "--out",
                 str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"cpu", "threads", "torch", "commit", "deformconv"} <= set(res["machine"])
    seen = {(r["contender"], r["mode"]) for r in res["rows"]}
    assert {("conv2d", "forward"), ("deformconv", "forward"), ("deformconv", "train"),
            ("grid_sample+matmul", "train")} <= seen
    assert all(r["median_ms"] > 0 and r["ratio_to_conv2d"] > 0 for r in res["rows"])
    assert res["memory"]["input_plus_output_bytes"] > 0
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
