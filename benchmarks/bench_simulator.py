"""Time the synthetic generator on each preset and at 20,000 cells x 2,000 genes.

Run: ``.venv/bin/python benchmarks/bench_simulator.py`` (prints a markdown table).
"""

from __future__ import annotations

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


def main(repeats: int = 3) -> None:
    print("| preset | cells x genes | best of 3 (s) | counts nnz (MB) | true_rate (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for preset, over in CASES:
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
