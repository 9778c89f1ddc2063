"""The test suite mirrors the package, and CI runs all of it: test file names are unique across
``tests/`` (pytest imports them by basename: there is no ``__init__.py``), every operator with
Triton kernels has its interpreter tests in ``tests/triton`` (one file may serve two operators
that share kernels), and both interpreter steps of ``.ci/run`` (the installed Triton and the
oldest supported one) run the whole ``tests/triton`` folder, not a part of it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
OPS = ROOT / "src" / "deformconv" / "ops"


def test_test_file_basenames_are_unique_and_there_is_no_init():
    files = sorted(p for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    names = [p.name for p in files]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert not list(TESTS.rglob("__init__.py"))


def test_every_operator_folder_has_tests():
    ops = sorted(p.parent.name for p in OPS.glob("*/__init__.py") if p.parent.name != "triton")
    folders = {p.name for p in TESTS.iterdir() if p.is_dir()}
    text = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    for op in ops:
        # a folder of its own (tests/<op>/, or dcn/ for dcnv3 and dcnv4), or tests naming it
        assert op in folders or f"deformconv.{op}(" in text or f"ops.{op}" in text, op


def test_every_triton_launcher_is_tested_in_the_interpreter_suite():
    text = "\n".join(p.read_text() for p in (TESTS / "triton").glob("test_*.py"))
    for launch in sorted(OPS.glob("*/triton/launch*.py")):
        op, module = launch.parents[1].name, launch.stem
        imported = re.search(rf"ops\.{op}\.triton import .*\b{module}\b", text)
        # dcnv4's launchers reuse dcnv3's kernels: reached through the public function with
        # the Triton backend forced.
        called = module == "launch" and f"deformconv.{op}(" in text
        assert imported or called, f"no test in tests/triton runs {op}.triton.{module}"


def test_ci_runs_the_whole_interpreter_suite_with_both_tritons():
    ci = (ROOT / ".ci" / "run").read_text()
    oldest = (ROOT / ".ci" / "triton-oldest.sh").read_text()
    assert re.search(r"TRITON_INTERPRET=1 python -m pytest [^\n]*tests/triton(\s|$)", ci)
    assert re.search(r"\.ci/triton-oldest\.sh \S+ tests/triton(\s|$)", ci)
    assert 'TESTS="${2:-tests/triton}"' in oldest
