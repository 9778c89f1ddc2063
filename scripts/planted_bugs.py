"""Plant known bugs in the pure-PyTorch kernels and check that the tests catch each one.

    python scripts/planted_bugs.py            # every bug, stop each run at its first failure
    python scripts/planted_bugs.py --all      # run the whole selection: list every failing test

Each bug is a small edit of ``deformconv/ops/torch_impl.py``'s source, applied in a fresh
pytest process (this file is loaded there as a plugin, ``-p planted_bugs``) by re-executing the
edited source in the module's namespace; nothing on disk changes. First a run without a bug
must pass; then every run with a bug must fail. Exit status 0 when all bugs are caught.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

# name -> (what it does, source text, replacement). Each source text occurs once.
BUGS = {
    "border-off-by-one": (
        "samples at the last row/column count as outside the image",
        "inside = (y >= -1) & (y < H) & (x >= -1) & (x < W)",
        "inside = (y >= -1) & (y < H - 1) & (x >= -1) & (x < W - 1)"),
    "grad-x1.001": (
        "the input gradient is scaled by 1.001",
        "gi = (g_in.view(N, H + 2, W + 2, C)[:, 1:H + 1, 1:W + 1].permute(0, 3, 1, 2)",
        "gi = 1.001 * (g_in.view(N, H + 2, W + 2, C)[:, 1:H + 1, 1:W + 1].permute(0, 3, 1, 2)"),
    "chunk-unwritten": (
        "the forward skips its last chunk of rows or images when there are several",
        "    for n0, n1, r0, r1 in _chunks(N, oH, oW * K * C * src.element_size()):\n"
        "        p = _plan(",
        "    chunks = list(_chunks(N, oH, oW * K * C * src.element_size()))\n"
        "    for n0, n1, r0, r1 in (chunks[:-1] if len(chunks) > 1 else chunks):\n"
        "        p = _plan("),
}

# The tests that exercise the kernels directly (the property test is left out: hypothesis
# shrinking a failure takes minutes).
TESTS = ["tests/test_ops.py", "tests/test_determinism.py", "-k", "not property"]
ENV = "DEFORMCONV_PLANTED_BUG"


def pytest_configure(config):  # runs in the pytest child when loaded with -p planted_bugs
    name = os.environ.get(ENV)
    if not name:
        return
    from deformconv.ops.deform_conv import torch_kernels as torch_impl

    _, old, new = BUGS[name]
    with open(torch_impl.__file__) as f:
        src = f.read()
    if src.count(old) != 1:
        raise RuntimeError(f"planted bug {name!r}: its source text is not found exactly once "
                           f"in {torch_impl.__file__}; update scripts/planted_bugs.py")
    exec(compile(src.replace(old, new), torch_impl.__file__, "exec"), torch_impl.__dict__)


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
        caught = rc == 1 and failed
        print(f"{name} ({BUGS[name][0]}): {'CAUGHT' if caught else 'MISSED'}: {summary} "
              f"({secs:.0f} s)")
        for t in failed:
            print(f"    {t}")
        if not caught:
            print(out[-3000:])
            missed.append(name)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
