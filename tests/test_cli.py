"""Each subcommand of the ``deformconv`` command line with tiny arguments."""

import json
import os
import subprocess
import sys

import pytest
import torch

import deformconv
from deformconv.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_help_names_every_subcommand(capsys):
    from deformconv.cli import COMMANDS
    names = [m.NAME for m in COMMANDS]
    assert names == ["check", "info", "kernels", "bench", "demo", "visualize"]
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "{" + ",".join(names) + "}" in text  # the usage line lists exactly these
    flat = " ".join(text.split())
    for m in COMMANDS:  # each one's line shows its own one-line help
        assert " ".join(m.HELP.split()[:6]) in flat, m.NAME
    for cmd in names:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: deformconv {cmd}")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"deformconv {deformconv.__version__}\n"


def _imports(path):
    """Every module ``path`` imports, at any level (function bodies included), resolved."""
    import ast
    pkg = path.parent.relative_to(path.parents[2]).as_posix().split("/")  # e.g. deformconv/demo
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return names


def test_commands_do_not_import_the_cli_back():
    """bench/ and demo/ never import cli.py or commands/ (no cycles, function level included);
    the shared argument helpers import only the standard library."""
    import pathlib
    root = pathlib.Path(deformconv.__file__).parent
    seen = 0
    for sub in ("bench", "demo"):
        for f in (root / sub).glob("*.py"):
            for name in _imports(f):
                seen += 1
                assert not name.startswith(("deformconv.cli", "deformconv.commands")), (f, name)
    assert seen > 20  # the walk really found the imports
    assert "deformconv.demo.figures.survey" in _imports(root / "demo" / "pipeline.py")
    mods = {n.split(".")[0] for n in _imports(root / "commands" / "_args.py")}
    assert mods <= {"__future__", "argparse", "os", "typing", "torch"}, mods


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
    ("--limit", "-5"), ("--width", "0"), ("--threads", "-1"), ("--epochs", "two"),
    ("--lr", "0")])
def test_demo_rejects_non_positive_ints(flag, value, capsys):
    _usage_error(["demo", flag, value], capsys, flag, "positive", value)


def test_demo_rejects_limit_below_batch_size(capsys):
    _usage_error(["demo", "--limit", "10", "--device", "cpu"], capsys, "--limit", "64", "10")


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


def test_visualize_writes_into_the_out_folder(tiny_models, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model = str(tiny_models / "deformable.pt")
    assert main(["visualize", "--model", model, "--index", "1", "--out",
                 str(tmp_path / "new" / "dir")]) == 0
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == [
        "visualize-index1.png"]
    assert (tmp_path / "new" / "dir" / "visualize-index1.png").read_bytes()[:8] == PNG
    assert list(cwd.iterdir()) == []  # nothing in the working directory itself
    # The default is a folder too, not the working directory.
    assert main(["visualize", "--model", model, "--index", "2"]) == 0
    assert [p.name for p in cwd.iterdir()] == ["deformconv-out"]
    assert (cwd / "deformconv-out" / "visualize-index2.png").read_bytes()[:8] == PNG
    _usage_error(["visualize", "--model", model, "--out", "x.png"], capsys, "--out", "folder")


def test_image_keeps_its_aspect_ratio(tiny_models, tmp_path, capsys):
    """A wide image (20x60) is resized to 11x32 and padded, not stretched to 32x32."""
    matplotlib_image = pytest.importorskip("matplotlib.image")
    img = torch.zeros(20, 60)
    img[5:15, 10:50] = 1  # a 10x40 bar, dark background
    matplotlib_image.imsave(tmp_path / "wide.png", img.numpy(), cmap="gray", vmin=0, vmax=1)
    assert main(["visualize", "--model", str(tiny_models / "deformable.pt"), "--image",
                 str(tmp_path / "wide.png"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "resized 60x20 to 32x11 (aspect ratio kept), padded with background to 32x32" in out
    assert (tmp_path / "o" / "visualize-wide.png").read_bytes()[:8] == PNG
    from deformconv.demo.data import load_image
    x, _ = load_image(str(tmp_path / "wide.png"), 32)
    rows = x[0, 0].amax(1) > 0.5
    cols = x[0, 0].amax(0) > 0.5
    # The bar keeps its 1:4 proportions (about 5x21 px), centred vertically.
    assert 4 <= rows.sum() <= 7 and 20 <= cols.sum() <= 23
    assert x[0, 0, :10].max() == 0 and x[0, 0, 21:].max() == 0  # the padding is background


def test_info_into_a_closed_pipe_is_quiet():
    """`deformconv info | head -0`: the reader is gone before info writes."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(deformconv.__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "deformconv", "info"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err


def test_bench_says_when_torchvision_is_missing(monkeypatch, capsys):
    import deformconv.bench.cpu
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision fails
    ran = []
    monkeypatch.setattr(deformconv.bench.cpu, "run", lambda shapes, variants, names, *a, **k:
                        ran.append(names))
    # Asked for by name: an error that says so, nothing timed.
    _usage_error(["bench", "--quick", "--contenders", "torchvision"], capsys, "--contenders",
                 "torchvision", "cannot run here")
    assert ran == []
    # By default: skipped with a note, the others run.
    assert main(["bench", "--quick"]) == 0
    assert "skipping torchvision" in capsys.readouterr().err
    assert "torchvision" not in ran[0] and {"conv2d", "deformconv"} <= set(ran[0])


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
    assert "test accuracy over 2 seeds: plain" in text and "receptive field" in text
    res = json.loads((out / "results.json").read_text())
    assert [(r["seed"], r["variant"]) for r in res["runs"]] == [
        (0, "plain"), (0, "deformable"), (1, "plain"), (1, "deformable")]
    assert res["runs"][1]["converted"] == ["features.6", "features.8", "features.10"]
    assert {"cpu", "torch", "commit", "deformconv"} <= set(res["machine"])
    report = (out / "report.md").read_text()
    assert "correlation with size" in report and "![spread against size]" in report
    for name in res["figures"]["files"]:
        assert (out / name).read_bytes()[:8] == PNG
        assert f"]({name})" in report
    state = torch.load(out / "models" / "deformable_seed0.pt")
    # The reported accuracy is what the saved model scores on the fixed test set.
    from deformconv.demo import demo_test_set
    from deformconv.demo.model import model_from_state_dict
    from deformconv.demo.train import predict
    test = demo_test_set(limit=130)
    for r in res["runs"]:
        net = model_from_state_dict(torch.load(out / "models" / f"{r['variant']}_seed"
                                               f"{r['seed']}.pt"))
        acc = (predict(net, test, torch.device("cpu")) == test.labels).float().mean().item()
        assert r["acc"] == pytest.approx(acc, abs=1e-9), r
    assert state["features.10.conv_offset.weight"].shape == (27, 32, 3, 3)
    # Spread of the composed points: exactly the regular 3x3x3 grid's 8 px for a plain model,
    # different once the offsets are trained.
    from deformconv.demo.figures import survey
    test = demo_test_set(limit=10)
    plain = model_from_state_dict(torch.load(out / "models" / "plain_seed0.pt"))
    sp = survey(plain, test.images, [test.centre])[1][0]
    torch.testing.assert_close(sp, torch.full((20,), 8.0))
    sp = survey(model_from_state_dict(state), test.images, [test.centre])[1][0]
    assert (sp - 8).abs().max() > 1e-3

    model = str(out / "models" / "deformable_seed0.pt")
    assert main(["visualize", "--model", model, "--index", "3", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "visualize-index3.png").read_bytes()[:8] == PNG
    # An image file with a light background, traced at a given pixel.
    import matplotlib.image
    img = torch.ones(40, 40, 3)
    img[10:30, 18:22] = 0
    matplotlib.image.imsave(tmp_path / "one.png", img.numpy())
    assert main(["visualize", "--model", model, "--image", str(tmp_path / "one.png"),
                 "--pixel", "16", "16", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "visualize-one.png").read_bytes()[:8] == PNG
    with pytest.raises(SystemExit):
        main(["visualize", "--model", str(tmp_path / "missing.pt")])
    assert "no model" in capsys.readouterr().err


def test_info_shows_the_dispatch_description(monkeypatch, capsys):
    """`info` prints what deformconv.ops.dispatch.describe() says."""
    import types

    import deformconv.ops
    fake = types.ModuleType("deformconv.ops.dispatch")
    fake.describe = lambda: "  cpu: BACKEND-UNDER-TEST"
    fake.backend = lambda: "auto"
    monkeypatch.setitem(sys.modules, "deformconv.ops.dispatch", fake)
    monkeypatch.setattr(deformconv.ops, "dispatch", fake, raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "kernels:\n  cpu: BACKEND-UNDER-TEST\n" in out
    assert "embedding_bag" not in out  # the fallback text is not printed as well


def _save(path, array):
    import matplotlib.image
    matplotlib.image.imsave(path, array.numpy(), vmin=0, vmax=1, cmap="gray" if array.dim() == 2
                            else None)


def test_image_on_grey_paper_pads_with_its_page(tiny_models, tmp_path):
    """A dark stroke on a grey page (0.67): after inversion the page level becomes 0 like
    the padding, the stroke's peak 1, and the ink's centre stays where the stroke is."""
    pytest.importorskip("matplotlib.image")
    from deformconv.demo.data import load_image
    from deformconv.demo.figures import centre_of_mass
    img = torch.full((30, 60), 2 / 3)
    img[5:25, 48:52] = 0.0  # near the right edge
    _save(tmp_path / "paper.png", img)
    x, note = load_image(str(tmp_path / "paper.png"), 32)
    assert "page level 0.33 taken as background" in note
    assert x[0, 0, :8].abs().max() == 0 and x[0, 0, 24:].abs().max() == 0  # padding
    assert x[0, 0, 8:24].abs().max() == pytest.approx(1, abs=0.02)
    page = x[0, 0, 10:22, 2:20]  # the inverted page inside the image, away from the stroke
    assert page.abs().max() < 0.02
    y, xc = centre_of_mass(x[0, 0])
    assert 15 <= y <= 17 and 25 <= xc <= 28  # at the stroke, not pulled to the middle


def test_transparent_and_blank_images(tiny_models, tmp_path, capsys):
    pytest.importorskip("matplotlib.image")
    from deformconv.demo.data import load_image
    rgba = torch.zeros(32, 32, 4)
    rgba[8:24, 14:18, 3] = 1  # black strokes, opaque; transparent elsewhere
    _save(tmp_path / "rgba.png", rgba)
    x, note = load_image(str(tmp_path / "rgba.png"), 32)
    assert "light background inverted" in note
    assert x[0, 0, 8:24, 14:18].min() > 0.9 and x[0, 0, :, :12].max() < 0.02
    model = str(tiny_models / "deformable.pt")
    for name, value in (("white", 1.0), ("black", 0.0), ("grey", 0.5)):
        _save(tmp_path / f"{name}.png", torch.full((20, 30), value))
        _usage_error(["visualize", "--model", model, "--image", str(tmp_path / f"{name}.png")],
                     capsys, "--image", f"{name}.png", "no ink found")


def test_visualize_says_where_it_traced(tiny_models, tmp_path, capsys):
    model = str(tiny_models / "deformable.pt")
    assert main(["visualize", "--model", model, "--index", "0", "--pixel", "12", "20",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # feature pixel round((12 - 1.5) / 4) = 3, round((20 - 1.5) / 4) = 5 -> 13.5, 21.5
    assert "traced at (13.5, 21.5), the nearest feature pixel to (12, 20)" in out
    _usage_error(["visualize", "--model", model, "--image", str(tmp_path)], capsys, "--image",
                 "is a folder")
    _usage_error(["visualize", "--model", model, "--index", "0", "--canvas", "64"], capsys,
                 "--canvas", "only applies to --image", "64")


def test_demo_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "report.md").write_text("")
    _usage_error(["demo", "--quick", "--out", str(tmp_path / "report.md")], capsys, "--out",
                 "report.md", "File exists")


@pytest.mark.parametrize("command", ["info", "check"])
def test_bad_backend_setting_is_reported_without_traceback(command):
    """A bad DEFORMCONV_BACKEND: `info` (where a user diagnoses it) and `check` name the
    variable, the value and the allowed ones, and exit non-zero without a traceback."""
    env = dict(os.environ, DEFORMCONV_BACKEND="bogus",
               PYTHONPATH=os.path.dirname(os.path.dirname(deformconv.__file__)))
    out = subprocess.run([sys.executable, "-m", "deformconv", command], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert "DEFORMCONV_BACKEND" in out.stderr and "'bogus'" in out.stderr
    assert all(b in out.stderr for b in ("auto", "triton", "torch")), out.stderr
    if command == "info":  # the rest of the diagnosis is still printed
        assert f"deformconv {deformconv.__version__}" in out.stdout


def test_kernels_unknown_name_is_an_error(capsys):
    pytest.importorskip("triton")
    from deformconv.ops.triton import report
    err = _usage_error(["kernels", "--kernel", "nothing"], capsys, "--kernel", "'nothing'")
    for spec in report.kernel_specs():  # the choices are named
        assert spec.name in err


def test_bench_empty_contenders_is_an_error(capsys):
    _usage_error(["bench", "--quick", "--contenders", ""], capsys, "--contenders", "empty")
    _usage_error(["bench", "--quick", "--contenders", " , "], capsys, "--contenders", "empty")
