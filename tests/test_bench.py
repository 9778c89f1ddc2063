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


def _no_run(monkeypatch, path=None):
    """cpu.run replaced: records the call, checks ``path`` does not exist yet."""
    ran = []

    def run(*a, **k):
        ran.append(path is None or not path.exists())
        return {"rows": []}
    monkeypatch.setattr(cpu, "run", run)
    return ran


def test_bench_out_is_a_file_checked_before_the_run(tmp_path, monkeypatch, capsys):
    """--out names the JSON file; a folder, a path ending in a separator or an unwritable
    place is a usage error before anything is timed, and creates nothing."""
    good = tmp_path / "a" / "r.json"
    ran = _no_run(monkeypatch, good)
    for bad, words in [(str(tmp_path), ["--out", "folder"]),
                       (str(tmp_path / "newdir") + "/", ["--out", "folder"]),
                       ("/proc/x.json", ["--out", "/proc/x.json"])]:
        with pytest.raises(SystemExit) as e:
            main(["bench", "--quick", "--out", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert all(w in err for w in words) and "Traceback" not in err, err
    assert ran == [] and list(tmp_path.iterdir()) == []
    # A good path: its folder is made, the file written after the run only.
    assert main(["bench", "--quick", "--contenders", "deformconv", "--out", str(good)]) == 0
    assert ran == [True] and json.loads(good.read_text()) == {"rows": []}


def test_bench_never_loses_a_finished_run(tmp_path, monkeypatch, capsys):
    """When the results cannot be written after the run (the place went away), they go to a
    file that can be written, and the message says where."""
    out = tmp_path / "gone" / "r.json"
    monkeypatch.setattr(cpu, "run_problem", lambda p, names, repeats, warmup: [])

    def vanish(*a, **k):
        import shutil
        shutil.rmtree(tmp_path / "gone")
        (tmp_path / "gone").write_text("now a file")
        return []
    monkeypatch.setattr(cpu, "summarize", vanish)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick", "--no-memory", "--contenders", "deformconv", "--out",
                 str(out)]) == 1
    err = capsys.readouterr().err
    saved = [p for p in tmp_path.iterdir() if p.name.startswith("deformconv-bench")]
    assert len(saved) == 1 and str(saved[0].name) in err and str(out) in err, err
    assert json.loads(saved[0].read_text())["rows"] == []
