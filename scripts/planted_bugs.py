"""Plant known bugs in the pure-PyTorch kernels and check that the tests catch each one.

    python scripts/planted_bugs.py            # every bug, stop each run at its first failure
    python scripts/planted_bugs.py --all      # run the whole selection: list every failing test,
                                              # count them per dimensionality (1-D, 2-D, 3-D)

Each bug is a small edit of the source of ``deformconv/ops/deform_conv/torch_kernels.py`` (the
one pure-PyTorch kernel of 1-, 2- and 3-D) or of the shared sampler ``deformconv/ops/bilinear.py``,
applied in a fresh
pytest process (this file is loaded there as a plugin, ``-p planted_bugs``) by re-executing the
edited source in the module's namespace; nothing on disk changes. First a run without a bug
must pass; then every run with a bug must fail. The kernel is shared by every dimensionality,
so with ``--all`` a bug counts as caught only when tests of 1-D, 2-D and 3-D fail (test ids name
the dimensionality: ``1d``, ``2d``, ``3d``). Exit status 0 when all bugs are caught.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

# name -> (what it does, source text, replacement). Each source text occurs once.
BUGS = {
    "border-off-by-one": (
        "samples at the last index of a dimension count as outside the input",
        "inside &= ((p > -1) if strict else (p >= -1)) & (p < s)",
        "inside &= ((p > -1) if strict else (p >= -1)) & (p < s - 1)"),
    "grad-x1.001": (
        "the input gradient is scaled by 1.001",
        "g_in = bilinear.bordered_interior(g_src, N, size, C)",
        "g_in = 1.001 * bilinear.bordered_interior(g_src, N, size, C)"),
    "tap-grid-off-by-one": (
        "the taps of the last dimension sit one input step further than their place",
        "grid = ((torch.arange(first, first + o[d], device=dev) * stride[d] - padding[d])",
        "grid = ((torch.arange(first, first + o[d], device=dev) * stride[d] - padding[d]"
        " + (d == R - 1))"),
    "position-grad-x1.001": (
        "the shared sampler's position (offset) gradients are scaled by 1.001",
        "out.append(m * _contract(diff, others).view(plan.shape))",
        "out.append(1.001 * m * _contract(diff, others).view(plan.shape))"),
    "gemm-column-grad-x1.001": (
        "the plain-GEMM column product's column gradient is scaled by 1.001",
        "return (go.movedim(1, -1).reshape(-1, O) @ wm).view(-1, Cg // G)",
        "return (1.001 * go.movedim(1, -1).reshape(-1, O) @ wm).view(-1, Cg // G)"),
    "chunk-unwritten": (
        "the forward skips its last chunk of rows or samples when there are several",
        "    for n0, n1, r0, r1 in chunks:\n        p = _plan(",
        "    for n0, n1, r0, r1 in (chunks[:-1] if len(chunks) > 1 else chunks):\n"
        "        p = _plan("),
}

# The tests that exercise the kernels directly (the property test is left out: hypothesis
# shrinking a failure takes minutes).
TESTS = ["tests/deform_conv/test_deform_conv.py",
         "tests/deform_conv/test_deform_conv_determinism.py", "-k", "not property"]
ENV = "DEFORMCONV_PLANTED_BUG"
DIMS = ("1d", "2d", "3d")


def dims(test_id: str):
    """The dimensionalities a test id names: a ``1d``/``2d``/``3d`` parameter or name suffix."""
    return set(re.findall(r"(?<![0-9a-z])([123]d)(?![0-9a-z])", test_id.split("::")[-1]))


def pytest_configure(config):  # runs in the pytest child when loaded with -p planted_bugs
    name = os.environ.get(ENV)
    if not name:
        return
    from deformconv.ops import bilinear
    from deformconv.ops.deform_conv import torch_kernels

    _, old, new = BUGS[name]
    for module in (torch_kernels, bilinear):
        with open(module.__file__) as f:
            src = f.read()
        if src.count(old) == 1:
            exec(compile(src.replace(old, new), module.__file__, "exec"), module.__dict__)
            return
    raise RuntimeError(f"planted bug {name!r}: its source text is not found exactly once; "
                       f"update scripts/planted_bugs.py")


def _run(name, stop_first):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.join(root, "scripts"), os.path.join(root, "src"),
         os.environ.get("PYTHONPATH", "")]))
    env.pop(ENV, None)
    if name:
        env[ENV] = name
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "planted_bugs", "-p", "no:cacheprovider",
           *(["-x"] if stop_first else []), *TESTS]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    failed = [line.split()[1] for line in proc.stdout.splitlines()
              if line.startswith("FAILED ")]
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return proc.returncode, failed, summary, time.time() - t0, proc.stdout + proc.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="do not stop at the first failure")
    ap.add_argument("bugs", nargs="*", choices=[[], *BUGS], default=[],
                    help="which bugs (default: all)")
    a = ap.parse_args(argv)
    rc, _, summary, secs, out = _run(None, stop_first=True)
    print(f"no bug: {summary} ({secs:.0f} s)")
    if rc != 0:
        print(out[-3000:])
        print("the tests fail without a planted bug: fix that first")
        return 1
    missed = []
    for name in a.bugs or list(BUGS):
        rc, failed, summary, secs, out = _run(name, stop_first=not a.all)
        per = {d: sum(d in dims(t) for t in failed) for d in DIMS}
        caught = rc == 1 and failed and (not a.all or all(per.values()))
        print(f"{name} ({BUGS[name][0]}): {'CAUGHT' if caught else 'MISSED'}: {summary} "
              f"({secs:.0f} s)")
        if a.all:
            print("    failed per dimensionality: "
                  + ", ".join(f"{d}: {n}" for d, n in per.items()))
        for t in failed:
            print(f"    {t}")
        if not caught:
            print(out[-3000:])
            missed.append(name)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
