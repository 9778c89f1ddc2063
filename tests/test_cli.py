"""Each subcommand of the ``deformconv`` command line with tiny arguments."""

import json
import os
import subprocess
import sys

import pytest
import torch

import deformconv
from deformconv.cli import build_parser, main

PNG = b"\x89PNG\r\n\x1a\n"


def test_help_names_every_subcommand():
    text = build_parser().format_help()
    assert "check, info, bench, demo, visualize" in text
    for cmd in ("check", "info", "bench", "demo", "visualize"):
        assert cmd in text
    for cmd in ("check", "info", "bench", "demo", "visualize"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


@pytest.mark.parametrize("cmd", ["check", "info", "bench"])
def test_subcommand_help_has_a_description(cmd, capsys):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    text = capsys.readouterr().out
    assert text.split("\n\n")[1].strip() and not text.split("\n\n")[1].startswith("options")


def _usage_error(argv, capsys, *words):
    """``main(argv)`` exits with code 2 and one error line naming all ``words``."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in err and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("flag, value", [
    ("--batch-size", "0"), ("--epochs", "0"), ("--seeds", "0"), ("--limit", "0"),
    ("--limit", "-5"), ("--width", "0"), ("--threads", "-1"), ("--epochs", "two")])
def test_demo_rejects_non_positive_ints(flag, value, capsys):
    _usage_error(["demo", flag, value], capsys, flag, "positive integer", value)


def test_demo_rejects_limit_below_batch_size_and_bad_lr(capsys):
    _usage_error(["demo", "--limit", "10", "--device", "cpu"], capsys, "--limit", "64", "10")
    _usage_error(["demo", "--lr", "0", "--device", "cpu"], capsys, "--lr", "0")


def test_demo_batch_size_divides_by_processes(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    _usage_error(["demo", "--batch-size", "64", "--device", "cpu"], capsys, "--batch-size",
                 "(3", "64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_demo_cuda_without_gpu(capsys):
    _usage_error(["demo", "--device", "cuda"], capsys,
                 "--device cuda requested but no CUDA device is available")
    _usage_error(["demo", "--device", "tpu"], capsys, "--device", "'tpu'")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Untrained demo state dicts (deformable and plain), saved like the demo saves them."""
    from deformconv.demo.model import build_model
    d = tmp_path_factory.mktemp("models")
    for deformable in (True, False):
        net, _ = build_model(deformable, 2, 8)
        torch.save(net.state_dict(), d / f"{'deformable' if deformable else 'plain'}.pt")
    return d


def test_visualize_argument_errors(tiny_models, tmp_path, capsys):
    model = str(tiny_models / "deformable.pt")
    _usage_error(["visualize", "--model", model, "--image", str(tmp_path / "nonexist.png")],
                 capsys, "--image", "nonexist.png", "does not exist")
    (tmp_path / "m.json").write_text("{}")
    _usage_error(["visualize", "--model", str(tmp_path / "m.json")], capsys, "--model",
                 "state dict saved by `deformconv demo`", "m.json")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    _usage_error(["visualize", "--model", str(tmp_path / "other.pt")], capsys, "--model",
                 "state dict saved by `deformconv demo`", "head.weight")
    _usage_error(["visualize", "--model", str(tiny_models / "plain.pt")], capsys, "--model",
                 "without deformable layers")
    _usage_error(["visualize", "--model", model, "--pixel", "100", "-5"], capsys, "--pixel",
                 "32x32", "100 -5")
    _usage_error(["visualize", "--model", model, "--canvas", "30"], capsys, "--canvas",
                 "multiple of 4", "30")
    _usage_error(["visualize", "--model", str(tmp_path / "missing.pt")], capsys, "--model",
                 "no model", "missing.pt")
    _usage_error(["visualize", "--model", model, "--index", "-1"], capsys, "--index", "-1")


def test_visualize_creates_the_out_folder(tiny_models, tmp_path, capsys):
    fig = tmp_path / "new" / "dir" / "x.png"
    assert main(["visualize", "--model", str(tiny_models / "deformable.pt"), "--index", "1",
                 "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == PNG


def test_python_dash_m(capsys):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(deformconv.__file__)))
    out = subprocess.run([sys.executable, "-m", "deformconv", "info"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"deformconv {deformconv.__version__}" in out.stdout


def test_check_and_info(capsys):
    assert main(["check"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "torch" in capsys.readouterr().out


def test_demo_then_visualize(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--epochs", "1", "--seeds", "2", "--limit", "130", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy      plain:" in text and "test accuracy deformable:" in text
    res = json.loads((out / "results.json").read_text())
    assert [(r["seed"], r["variant"]) for r in res["runs"]] == [
        (0, "plain"), (0, "deformable"), (1, "plain"), (1, "deformable")]
    assert res["runs"][1]["converted"] == ["features.6", "features.8", "features.10"]
    assert all(0 <= r["acc"] <= 1 for r in res["runs"])
    assert all(r["spread_small"] > 0 for r in res["runs"] if r["variant"] == "deformable")
    assert "correlation with size" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "![sampling_small.png](sampling_small.png)" in report
    for name in ("sampling_small.png", "sampling_large.png"):
        assert (out / name).read_bytes()[:8] == PNG
    state = torch.load(out / "models" / "deformable_seed0.pt")
    assert state["features.10.conv_offset.weight"].shape == (27, 32, 3, 3)
    # Spread of the composed points: exactly the regular 3x3x3 grid's 8 px for a plain model,
    # different once the offsets are trained.
    from deformconv.demo import demo_test_set
    from deformconv.demo.figures import sampling_spread
    from deformconv.demo.model import model_from_state_dict
    test = demo_test_set(limit=10)
    plain = model_from_state_dict(torch.load(out / "models" / "plain_seed0.pt"))
    sp = sampling_spread(plain, test.images, test.centre)
    torch.testing.assert_close(sp, torch.full((20,), 8.0))
    sp = sampling_spread(model_from_state_dict(state), test.images, test.centre)
    assert (sp - 8).abs().max() > 1e-3

    model = str(out / "models" / "deformable_seed0.pt")
    fig = tmp_path / "v.png"
    assert main(["visualize", "--model", model, "--index", "3", "--out", str(fig)]) == 0
    assert fig.read_bytes()[:8] == PNG
    # An image file with a light background, traced at a given pixel.
    import matplotlib.image
    img = torch.ones(40, 40, 3)
    img[10:30, 18:22] = 0
    matplotlib.image.imsave(tmp_path / "one.png", img.numpy())
    fig2 = tmp_path / "w.png"
    assert main(["visualize", "--model", model, "--image", str(tmp_path / "one.png"),
                 "--pixel", "16", "16", "--out", str(fig2)]) == 0
    assert fig2.read_bytes()[:8] == PNG
    with pytest.raises(SystemExit):
        main(["visualize", "--model", str(tmp_path / "missing.pt")])
    assert "no model" in capsys.readouterr().err
