"""Cost of the reuse check's data fingerprint at the atlas subsample's size.

`ensemblevi run` hashes the registered count matrix, genes, cells and the registered obs
columns before it decides whether a saved model can be reused
(`ensemblevi._fingerprint.data_fingerprint`). This times it on `heartlike` data of
18,641 cells x 1,200 genes, sparse (as simulated) and dense, median of 5 calls.

    .venv/bin/python benchmarks/bench_fingerprint.py [--cells 18641] [--genes 1200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ensemblevi._fingerprint import data_fingerprint
from ensemblevi.data import synthetic


def timed(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=18641)
    parser.add_argument("--genes", type=int, default=1200)
    args = parser.parse_args()
    adata = synthetic("heartlike", seed=0, n_cells=args.cells, n_genes=args.genes, lean=True)
    layer = "counts" if "counts" in adata.layers else None
    x = adata.X if layer is None else adata.layers[layer]
    print(f"{adata.n_obs:,} cells x {adata.n_vars:,} genes, {x.nnz:,} non-zeros")
    print("| matrix | median of 5 (s) |")
    print("| --- | --- |")
    sparse_s = timed(lambda: data_fingerprint(adata, layer, ["batch", "cell_type"]))
    print(f"| sparse CSR ({x.nnz:,} non-zeros) | {sparse_s:.3f} |")
    adata.layers["dense"] = np.asarray(x.todense())
    dense_s = timed(lambda: data_fingerprint(adata, "dense", ["batch", "cell_type"]))
    print(f"| dense ({adata.layers['dense'].dtype}) | {dense_s:.3f} |")


if __name__ == "__main__":
    main()
