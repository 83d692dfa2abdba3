"""The DE null check on real counts: PBMC 3k CD4 T cells, half against half.

Trains a deep ensemble (``EnsembleSCVI(ensemble="deep", n_members=4)``) on PBMC 3k
(``../shared/data/pbmc3k.h5ad``, raw counts; the ``--n-genes`` highly variable genes of a
log-normalised copy, scanpy's ``seurat`` flavour), then runs the default DE (``population``
estimand, ``delta=0.5``, 5% target, 50 draws per member, 500 cells per side) of CD4 T cells
against the rest with ``null_check=True``: the same test on ``--n-null`` seeded random
halves of the CD4 T cells, where no gene truly changes. Prints the real calls and, per
repetition, the genes called on the halves (count and fraction of genes), the mean, and
whether the warning fired; ``--out`` writes the same as JSON.

Run: ``.venv/bin/python benchmarks/de_null_check.py`` (about 10 minutes on 2 CPU cores
with the defaults; ``--epochs``/``--n-genes`` smaller for a quicker look).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

#: the first ``shared/data/pbmc3k.h5ad`` above this file (a worktree sits deeper)
DATA = next(
    (
        p / "shared" / "data" / "pbmc3k.h5ad"
        for p in Path(__file__).resolve().parents[1:]
        if (p / "shared" / "data" / "pbmc3k.h5ad").exists()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k.h5ad",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--group", default="CD4 T cells")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--n-null", type=int, default=3)
    parser.add_argument("--delta", type=float, default=0.5)
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the result")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up in a redirected log
    if not args.data.exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs the PBMC 3k counts.")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    import anndata
    import scanpy as sc

    import ensemblevi as ev
    from ensemblevi._files import write_json

    adata = anndata.read_h5ad(args.data)
    sc.pp.filter_genes(adata, min_cells=3)
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.highly_variable_genes(lognorm, n_top_genes=args.n_genes, flavor="seurat")
    adata = adata[:, lognorm.var["highly_variable"].to_numpy()].copy()
    n_group = int((adata.obs["cell_type"] == args.group).sum())
    print(f"{adata.n_obs} cells x {adata.n_vars} genes; {n_group} {args.group}")

    ev.model.EnsembleSCVI.setup_anndata(adata)
    model = ev.model.EnsembleSCVI(adata, n_members=args.members, ensemble="deep", seed=args.seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=args.epochs, seed=args.seed, enable_progress_bar=False)
    print(
        f"trained {args.members} members x {args.epochs} epochs in {time.perf_counter() - t0:.0f} s"
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = model.differential_expression(
            groupby="cell_type",
            group1=args.group,
            delta=args.delta,
            fdr_target=args.fdr,
            seed=args.seed,
            null_check=True,
            n_null=args.n_null,
            progress=False,
        )
    null = table.attrs["null_check"]
    real = int(table[f"is_de_fdr_{args.fdr:g}"].sum())
    print(f"DE + null check in {time.perf_counter() - t0:.0f} s")
    print(
        f"real test, {args.group} vs rest: {real} of {adata.n_vars} genes called "
        f"({100 * real / adata.n_vars:.2f}%) at {args.fdr:g}"
    )
    print(f"null halves ({null['n_cells_half1'][0]} vs {null['n_cells_half2'][0]} cells):")
    for r, (n, f) in enumerate(zip(null["n_called"][0], null["fraction_called"][0], strict=True)):
        print(f"  repetition {r}: {n} genes called ({100 * f:.2f}%)")
    print(
        f"  mean: {null['mean_called'][0]:.1f} genes "
        f"({100 * null['mean_fraction_called'][0]:.2f}%); warning: {null['any_warn']}"
    )
    print(null["message"])
    print("UserWarning raised:", any("Null check" in str(w.message) for w in caught))
    if args.out is not None:
        settings = vars(args) | {"data": str(args.data), "out": str(args.out)}
        write_json(
            args.out,
            {
                "settings": settings,
                "n_genes": int(adata.n_vars),
                "n_group": n_group,
                "real_calls": real,
                "null_check": null,
            },
        )


if __name__ == "__main__":
    main()
