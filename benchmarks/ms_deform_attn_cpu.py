"""Multi-scale deformable attention on CPU against the ``grid_sample`` fallback: time and peak
memory, forward and forward+backward, at Deformable DETR's encoder and decoder scales.

    python benchmarks/ms_deform_attn_cpu.py [--repeats 5] [--warmup 1] [--threads 1 2]
        [--quick] [--out benchmarks/results/ms_deform_attn_cpu.json]

Shapes (float32): batch 2, four levels 100x134, 50x67, 25x34, 13x17 (S = 17,821), 8 heads of
32 channels, 4 points; encoder: queries = keys (17,821); decoder: 300 queries. Locations are
uniform over the maps with a 5% margin outside, attention weights uniform.

Contenders: ``deformconv`` (``ms_deform_attn``, pure-PyTorch kernels) and ``grid_sample``
(one ``F.grid_sample`` per level, the fallback of mmcv, Deformable DETR and transformers;
``reference.ms_deform_attn_grid_sample``). Time: both in one process, alternating each round
(the order reversed every other round) so machine load hits both alike, medians over the
rounds, for each thread count asked. Peak memory: in a fresh process per contender and mode,
the growth of the peak resident size (``VmHWM``, reset first) over the resident size once the
inputs exist, so it includes the output and the gradients (Linux only; independent of load).
Every row carries the machine (CPU, vector extension), versions, commit and the load average
of the minute before the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from deformconv import ms_deform_attn  # noqa: E402
from deformconv.bench import load_average, machine_info, medians, time_contenders  # noqa: E402
from deformconv.ops.ms_deform_attn.reference import (  # noqa: E402
    DETR_LEVELS,
    make_inputs,
    ms_deform_attn_grid_sample,
)

SCALES = {"encoder": dict(N=2, Q=sum(h * w for h, w in DETR_LEVELS)),
          "decoder": dict(N=2, Q=300)}
QUICK_LEVELS = ((20, 27), (10, 14))
ARGS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
        "attention_weights")


def inputs(scale: str, quick: bool = False, requires_grad: bool = False) -> dict:
    levels = QUICK_LEVELS if quick else DETR_LEVELS
    N, Q = SCALES[scale]["N"], SCALES[scale]["Q"]
    if quick:
        Q = sum(h * w for h, w in levels) if scale == "encoder" else 30
    return make_inputs(N=N, Q=Q, M=8, D=32, shapes=levels, P=4, dtype=torch.float32,
                       margin=0.05, requires_grad=requires_grad)


def contenders(t: dict):
    """name -> (forward, forward+backward) callables on the tensors ``t``."""
    args = [t[k] for k in ARGS]
    leaves = [t["value"], t["sampling_locations"], t["attention_weights"]]
    grad = torch.ones(())

    def ours():
        return ms_deform_attn(*args)

    def fallback():
        return ms_deform_attn_grid_sample(args[0], args[1], args[3], args[4])

    def train(fn):
        def step():
            out = fn()
            torch.autograd.grad(out, leaves, grad.expand(out.shape))
        return step

    def infer(fn):
        def step():
            with torch.no_grad():
                fn()
        return step

    return {"deformconv": (infer(ours), train(ours)),
            "grid_sample": (infer(fallback), train(fallback))}


_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
sys.argv = sys.argv[1:]
from ms_deform_attn_cpu import contenders, inputs
from deformconv.bench import peak_extra_bytes
scale, name, mode, quick = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == '1'
small = contenders(inputs('decoder', quick=True, requires_grad=True))[name]
small[0](); small[1]()  # warm up (libraries, allocator)
fns = contenders(inputs(scale, quick, requires_grad=True))[name]
print(json.dumps(peak_extra_bytes(fns[0 if mode == 'fwd' else 1])[0]))
"""


def peak_extra_bytes(scale: str, name: str, mode: str, quick: bool) -> int:
    """Peak resident growth of one call over the inputs, in a fresh process (Linux)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).parent), scale,
                           name, mode, "1" if quick else "0"], capture_output=True, text=True,
                          check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return max(0, int(done.stdout.strip().splitlines()[-1]))


def run(repeats: int, warmup: int, threads, quick: bool, memory: bool, log=print):
    rows = []
    for scale in SCALES:
        t = inputs(scale, quick, requires_grad=True)
        fns = contenders(t)
        peaks = {}
        if memory:
            for name in fns:
                for mode in ("fwd", "fwd+bwd"):
                    peaks[name, mode] = peak_extra_bytes(scale, name, mode, quick)
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            load = load_average()
            info = machine_info()
            for i, mode in enumerate(("fwd", "fwd+bwd")):
                times = time_contenders({k: v[i] for k, v in fns.items()}, repeats, warmup)
                for name, (med, _, ratio) in medians(times, "grid_sample").items():
                    row = {**info, "scale": scale, "queries": t["sampling_locations"].shape[1],
                           "levels": t["spatial_shapes"].tolist(), "heads": 8, "head_dim": 32,
                           "points": 4, "batch": 2, "dtype": "float32", "contender": name,
                           "mode": mode, "median_s": med, "times_s": times[name],
                           "speedup_vs_grid_sample": 1 / ratio,
                           "peak_extra_MiB": (peaks[name, mode] / 2 ** 20 if memory
                                              else None),
                           "load_average_before": load, "repeats": repeats}
                    rows.append(row)
                    peak = f"{row['peak_extra_MiB']:8.1f} MiB" if memory else ""
                    log(f"{scale:8s} threads={n_threads} {mode:8s} {name:12s} "
                        f"{med * 1e3:9.1f} ms  x{1 / ratio:5.2f}  {peak}  load {load:.2f}")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    a = p.parse_args(argv)
    rows = run(a.repeats, a.warmup, a.threads, a.quick, not a.no_memory)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {len(rows)} rows to {a.out}")


if __name__ == "__main__":
    main()
