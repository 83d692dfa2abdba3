"""Held-out likelihood and member diversity of EnsembleSCVI kinds against one scVI.

For each dataset, cells are split 80/20; every model trains on the 80% and is scored on
the held-out 20%: importance-sampled marginal log-likelihood (100 samples) of each
member, of the member mixture and of one ``scvi.model.SCVI``; member diversity = mean
pairwise |log1p(rho_k) - log1p(rho_l)| of members' normalised expression (per 1e4
counts, 10 latent samples averaged), also relative to the deep ensemble's, next to the
same quantity between two sampling passes of one member (the Monte Carlo floor).

Run: ``.venv/bin/python benchmarks/bench_ensemble_quality.py [--fast]``
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ARCH = {"n_hidden": 128, "n_latent": 10, "n_layers": 1, "gene_likelihood": "zinb"}
KINDS = ["deep", "batch", "mcdropout"]


def datasets(fast: bool):
    from ensemblevi.data import preprocess, read, synthetic

    yield "lopez2020", synthetic("lopez2020", seed=0), None, 60 if fast else 300
    yield (
        "heartlike (4,000 cells)",
        synthetic("heartlike", seed=0, n_cells=4000),
        "batch",
        10 if fast else 60,
    )
    pbmc = SHARED / "pbmc3k.h5ad"
    if pbmc.exists():
        adata = read(pbmc)
        preprocess(adata, n_top_genes=1200)
        yield "PBMC 3k (1,200 HVG)", adata, None, 20 if fast else 150
    else:
        print(f"PBMC 3k skipped: {pbmc} is absent", file=sys.stderr)


def split(adata, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(adata.n_obs)
    n_test = adata.n_obs // 5
    return adata[idx[n_test:]].copy(), adata[idx[:n_test]].copy()


def diversity(members: np.ndarray) -> float:
    logs = np.log1p(members)
    pairs = itertools.combinations(range(len(logs)), 2)
    return float(np.mean([np.abs(logs[a] - logs[b]).mean() for a, b in pairs]))


def run(name, adata, batch_key, epochs, n_members):
    import scvi
    import torch

    from ensemblevi.model import EnsembleSCVI

    layer = "counts" if "counts" in adata.layers else None
    train, test = split(adata)
    rows = []
    scvi.model.SCVI.setup_anndata(train, layer=layer, batch_key=batch_key)
    scvi.settings.seed = 0
    t0 = time.perf_counter()
    single = scvi.model.SCVI(train, **ARCH)
    single.train(max_epochs=epochs, enable_progress_bar=False)
    torch.manual_seed(0)
    # per-cell mean: scvi-tools' return_mean=True averages minibatch means, which overweights
    # the last, short minibatch (see benchmarks/bench_member_gap.py)
    ll_single = float(single.get_marginal_ll(test, n_mc_samples=100, return_mean=False).mean())
    rows.append(("scvi.model.SCVI", ll_single, None, None, None, time.perf_counter() - t0))
    EnsembleSCVI.setup_anndata(train, layer=layer, batch_key=batch_key)
    for kind in KINDS:
        t0 = time.perf_counter()
        model = EnsembleSCVI(train, n_members=n_members, ensemble=kind, seed=0, **ARCH)
        model.train(max_epochs=epochs, enable_progress_bar=False, seed=0)
        ll = model.get_marginal_ll(test, n_mc_samples=100, return_table=True)
        torch.manual_seed(0)
        members = model.get_normalized_expression(
            test, library_size=1e4, n_samples=10, return_members=True
        )
        torch.manual_seed(1)
        again = model.get_normalized_expression(test, library_size=1e4, n_samples=10, member=0)
        floor = float(np.abs(np.log1p(members[0]) - np.log1p(again.to_numpy())).mean())
        member_ll = [ll[f"member_{k}"] for k in range(model.n_members)]
        rows.append(
            (
                f"EnsembleSCVI {kind} K={n_members}",
                ll["mixture"],
                member_ll,
                diversity(members),
                floor,
                time.perf_counter() - t0,
            )
        )
    deep_div = rows[1][3]
    print(
        f"\n### {name}: {train.n_obs:,} train / {test.n_obs:,} held-out cells, "
        f"{adata.n_vars:,} genes, {epochs} epochs\n"
    )
    print(
        "| model | held-out log p(x): mixture / single | members (mean, min..max) "
        "| diversity | vs deep | MC floor | train+eval (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, ll, member_ll, div, floor, secs in rows:
        if member_ll is None:
            print(f"| {label} | {ll:.2f} | | | | | {secs:.0f} |")
        else:
            print(
                f"| {label} | {ll:.2f} | {np.mean(member_ll):.2f} ({min(member_ll):.2f}.."
                f"{max(member_ll):.2f}) | {div:.4f} | {div / deep_div:.2f} | {floor:.4f} "
                f"| {secs:.0f} |"
            )
    gain = rows[1][1] - ll_single
    print(f"\ndeep K={n_members} mixture minus single scVI: {gain:+.2f} nats per cell")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="few epochs, for a smoke run")
    parser.add_argument("--members", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, adata, batch_key, epochs in datasets(args.fast):
        run(name, adata, batch_key, epochs, args.members)


if __name__ == "__main__":
    main()
