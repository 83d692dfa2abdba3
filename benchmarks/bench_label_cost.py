"""Training time of EnsembleSCANVI (K = 4) against one scANVI, side by side on one machine.

Trains, one after the other in one process, ``scvi.model.SCANVI`` and each K = 4 kind the
way ``bench_label_transfer.py`` does (scVI ``--epochs``, then ``--scanvi-epochs`` of
scANVI; PBMC 3k, 1,200 HVGs, 20% of the labels hidden). K sequential scANVIs cost K x the
one measured here (stated as an extrapolation in docs/benchmarks.md). Run it on an idle
machine: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_label_cost.py``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    from bench_label_transfer import LABELS, UNLABELED, _split, _train_ensemble, _train_scanvi

    import ensemblevi as ev

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--scanvi-epochs", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=["deep", "batch"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    adata = ev.data.read(args.data)
    ev.data.preprocess(adata, n_top_genes=1200)
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    labels[_split(adata, 0)] = UNLABELED
    adata.obs[LABELS] = labels
    _, one = _train_scanvi(adata.copy(), 0, args.epochs, args.scanvi_epochs)
    print(f"one scANVI: {one:.0f} s; 4 sequential scANVIs: {4 * one:.0f} s (extrapolated)")
    print("| K = 4 kind | training s | vs one scANVI | vs 4 sequential |")
    print("| --- | --- | --- | --- |")
    for kind in args.kinds:
        _, secs = _train_ensemble(adata.copy(), kind, 0, args.epochs, args.scanvi_epochs)
        print(f"| {kind} | {secs:.0f} | {secs / one:.2f} | {secs / (4 * one):.2f} |", flush=True)


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
