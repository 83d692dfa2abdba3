"""The FDR suite on real counts with a known truth: ``pbmc_thinning`` and ``pbmc_null``.

A reduced setting of ``ensemblevi benchmark --suite fdr --datasets pbmc_thinning,pbmc_null``
for a machine with few cores: deep ensembles of ``--deep`` members (with the single VAE
``deep K=1`` = member 0), scvi-tools' ``change`` mode on member 0 and Wilcoxon; no
BatchEnsemble / Hyper-BatchEnsemble and no wider single VAEs unless ``--all-kinds``.
Records are saved under ``--out`` (reused on a rerun), the Markdown section is printed.

Run: ``.venv/bin/python benchmarks/bench_thinning.py --reps 2 --epochs 150``
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbmc", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--out", default="bench_results/fdr_thinning")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--deep", type=int, default=4)
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--all-kinds", action="store_true")
    parser.add_argument("--datasets", nargs="+", default=["pbmc_thinning", "pbmc_null"])
    args = parser.parse_args()

    from ensemblevi.benchmark import _fdr
    from ensemblevi.benchmark._markdown import fdr_markdown

    kw = {} if args.all_kinds else {"deep_sizes": (1, args.deep), "wide": (), "batch_kinds": ()}
    cfg = _fdr.FDRConfig(
        presets=(), reps=args.reps, n_samples=args.n_samples, datasets=tuple(args.datasets), **kw
    )
    cfg.epochs.update(dict.fromkeys(_fdr.THINNING_DATASETS, args.epochs))
    records = _fdr.run(Path(args.out), cfg, pbmc=args.pbmc)
    if not records:
        print("no records (is --pbmc there?)")
        return
    summary = _fdr.summarise(records)
    summary.to_csv(Path(args.out) / "summary.csv", index=False)
    print(fdr_markdown(summary, records))


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
