"""Cost of the gene-order check every ``adata=`` entry point runs (issue 32, kind 4).

``EnsembleMixin._validate_anndata`` compares the AnnData's genes with the model's: genes in
order cost one ``Index.equals``; the same genes in another order cost a reordered copy.
Atlas size by default (18,641 cells x 1,200 genes, sparse counts). The model is built, not
trained: the check does not depend on the weights.

    PYTHONPATH=src python benchmarks/bench_gene_order.py [--cells N --genes G --repeats R]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from anndata import AnnData
from scipy import sparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=18641)
    parser.add_argument("--genes", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    from ensemblevi.model import EnsembleSCVI

    rng = np.random.default_rng(0)
    x = sparse.random(
        args.cells,
        args.genes,
        density=0.1,
        format="csr",
        random_state=0,
        data_rvs=lambda n: rng.poisson(3, n) + 1,
    ).astype(np.float32)
    adata = AnnData(x)
    adata.var_names = [f"g{i}" for i in range(args.genes)]
    EnsembleSCVI.setup_anndata(adata)
    model = EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2)
    same = adata.copy()
    permuted = adata[:, rng.permutation(args.genes)].copy()
    rows = []
    for name, data in (("genes in order", same), ("genes permuted", permuted)):
        model._validate_anndata(data)  # registers it once, as a first get_* call does
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the reorder warning, expected
                model._validate_anndata(data)
            times.append(time.perf_counter() - t0)
        rows.append((name, float(np.median(times))))
    print(f"{args.cells:,} cells x {args.genes:,} genes, median of {args.repeats}:")
    for name, t in rows:
        print(f"  {name}: {t * 1e3:.3f} ms per call")


if __name__ == "__main__":
    main()
