"""Release hygiene: one version string, a license file matching the metadata, and a wheel and an
sdist that build and install in a fresh environment and import there."""

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import deformconv

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kwargs):
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _pyproject():
    return (ROOT / "pyproject.toml").read_text()


def test_version_has_one_source():
    text = _pyproject()
    assert re.search(r'^dynamic = \["version"\]', text, re.M)
    assert not re.search(r'^version = "', text, re.M)
    ns = {}
    exec((ROOT / "src" / "deformconv" / "_version.py").read_text(), ns)
    assert ns["__version__"] == deformconv.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", deformconv.__version__)
    assert f"## {deformconv.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_license_file_matches_the_metadata():
    assert 'license = { text = "Apache-2.0" }' in _pyproject()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_no_upper_bound_on_torch():
    deps = re.search(r"^dependencies = \[(.*)\]", _pyproject(), re.M).group(1)
    torch_req = [d for d in deps.split(",") if "torch" in d]
    assert torch_req and "<" not in torch_req[0] and ">=" in torch_req[0]


def _site_dirs():
    """The folders the running interpreter imports installed packages from: its site-packages
    (a venv's, plus the base's when the venv includes them) and the user site."""
    import site
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


def _fresh_env(env_dir):
    """A venv that sees the packages of the interpreter running the tests (torch), whether
    that is the system Python or a venv: ``--system-site-packages`` would give the *base*
    interpreter's, which in a venv lacks torch. The folders are added as plain path entries
    (their .pth files are not run), so an editable deformconv there stays invisible."""
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_outer_site.pth").write_text("".join(d + "\n" for d in _site_dirs()))
    return py


@pytest.mark.slow
def test_wheel_and_sdist_build_install_and_import(tmp_path):
    """PEP 517 hooks of setuptools (no network), then pip into a fresh venv that sees the
    test interpreter's packages (torch, the same one); the import must come from the venv."""
    pytest.importorskip("setuptools", minversion="70.1",
                        reason="the build needs setuptools>=70.1 (in the test extras)")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache", "deformconv-out"))
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # (the path goes into the code, not sys.argv, which setuptools reads as commands)
    build = (f"from setuptools import build_meta as b; b.build_sdist({str(dist)!r}); "
             f"b.build_wheel({str(dist)!r})")
    _run([sys.executable, "-c", build], cwd=src, env=env)
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    v = deformconv.__version__
    assert wheels[0].name.startswith(f"deformconv-{v}-") and sdists[0].name == \
        f"deformconv-{v}.tar.gz"
    import torch
    check = ("import deformconv, importlib.metadata as m, torch; "
             "assert deformconv.__file__.startswith(sys.prefix), deformconv.__file__; "
             f"assert torch.__file__ == {torch.__file__!r}, torch.__file__; "
             "assert m.version('deformconv') == deformconv.__version__; "
             "x = torch.zeros(1, 2, 4, 4); l = deformconv.DeformConv2dPack(2, 2, 3, padding=1); "
             "assert l(x).shape == (1, 2, 4, 4); print(deformconv.__version__)")
    # The sdist is checked without importing torch (the slow part): files and metadata only.
    light = ("import sys, importlib.metadata as m, importlib.util as u; "
             "spec = u.find_spec('deformconv'); assert spec.origin.startswith(sys.prefix); "
             "assert m.version('deformconv') == %r; print(%r)" % (v, v))
    for i, (artifact, code) in enumerate(((wheels[0], check), (sdists[0], light))):
        py = _fresh_env(tmp_path / f"venv{i}")
        _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
              "--no-index", "--no-build-isolation", str(artifact)], env=env, cwd=tmp_path)
        out = _run([str(py), "-c", "import sys; " + code], env=env, cwd=tmp_path)
        assert out.stdout.strip() == v
