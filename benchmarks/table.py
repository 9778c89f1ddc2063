"""Print the README's CPU table (Markdown) from a results JSON written by `deformconv bench`."""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    res = json.load(open(path))
    rows = res["rows"]
    cell = defaultdict(dict)
    for r in rows:
        cell[(r["shape"], r["mode"])][r["contender"]] = r
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    names = ["deformconv", "onnxruntime", "grid_sample+matmul", "torchvision"]
    present = [n for n in names if any(n in v for v in cell.values())]
    head = "| shape (N,C,H,W)->O | mode | conv2d ms | " + " | ".join(present) + " |"
    print(head)
    print("|" + "---|" * (3 + len(present)))
    for s in shapes:
        for mode in ("forward", "train"):
            c = cell[(s, mode)]
            vals = [f"{c[n]['median_ms']:.1f} ms (x{c[n]['ratio_to_conv2d']:.2f})" if n in c
                    else "-" for n in present]
            print(f"| {s} | {mode} | {c['conv2d']['median_ms']:.1f} | " + " | ".join(vals) + " |")
    print()
    geo = {(g["mode"], g["contender"]): g["geomean_ratio"] for g in res["summary"]}
    for mode in ("forward", "train"):
        parts = [f"{n} x{geo[(mode, n)]:.2f}" for n in present if (mode, n) in geo]
        print(f"- geometric mean over the four main shapes, {mode}: " + ", ".join(parts))
    mem = res.get("memory")
    if mem:
        print(f"- peak extra memory of a forward on {mem['shape']}: "
              f"{mem['peak_extra_forward_bytes'] / 2**20:.1f} MiB = {mem['ratio']:.2f} x "
              f"(input + output)")
    m = res["machine"]
    print(f"- machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, onnxruntime "
          f"{m.get('onnxruntime') or '-'}, commit {m['commit']}, {res['date']}")


if __name__ == "__main__":
    main(sys.argv[1])
