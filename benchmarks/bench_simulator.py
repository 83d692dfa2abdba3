"""Time the synthetic generator on each preset and at 20,000 cells x 2,000 genes.

Run: ``.venv/bin/python benchmarks/bench_simulator.py`` (prints a markdown table;
``--cells 100 --repeats 1`` shrinks every case, for a smoke run).
"""

from __future__ import annotations

import argparse
import resource
import time

from ensemblevi.data import synthetic

CASES = [
    ("lopez2020", {}),
    ("draft", {}),
    ("hard", {}),
    ("heartlike", {}),
    ("draft", {"n_cells": 20_000, "n_genes": 2_000}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=None, help="every case's cells")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = args.repeats
    cases = CASES
    if args.cells is not None:  # smaller cases (the 2,000 genes case too: 200 genes)
        cases = [
            (p, {**o, "n_cells": args.cells, **({"n_genes": 200} if o else {})}) for p, o in CASES
        ]
    print(f"| preset | cells x genes | best of {repeats} (s) | counts nnz (MB) | true_rate (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for preset, over in cases:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            ad = synthetic(preset, seed=r, **over)
            times.append(time.perf_counter() - t0)
        x = ad.layers["counts"]
        sparse_mb = (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 2**20
        print(
            f"| {preset} {over or ''} | {ad.n_obs:,} x {ad.n_vars:,} | {min(times):.2f} "
            f"| {sparse_mb:.0f} | {ad.layers['true_rate'].nbytes / 2**20:.0f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"\npeak resident memory of the whole run: {peak:.0f} MB")


if __name__ == "__main__":
    main()
