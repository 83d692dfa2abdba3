"""Time and memory of the stability analyses at atlas size: 36 members x 18,641 cells x 10.

The members' latent codes are simulated (12 planted populations of unequal size, each
member its own rotation, shift and noise), so this measures the stability code alone:
every member's exact kNN graph, neighbourhood Jaccard over the 630 member pairs, Leiden on
every member, the co-assignment consensus and the cluster table. Target: under 2 minutes
and 2 GB on the project's 2-core machine.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_stability_scale.py``
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def planted(n_members: int, n_cells: int, dim: int, seed: int = 0) -> np.ndarray:
    """``(K, n, d)`` codes: 12 populations, each member a different rotation of them."""
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.ones(12) * 2)
    truth = rng.choice(12, n_cells, p=sizes)
    base = rng.normal(0, 4, (12, dim))[truth] + rng.normal(0, 1, (n_cells, dim))
    out = np.empty((n_members, n_cells, dim), dtype=np.float32)
    for m in range(n_members):
        q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        out[m] = base @ q + rng.normal(0, 0.3, (n_cells, dim))
    return out


def main() -> None:
    from ensemblevi.tl._stability_core import (
        cluster_table,
        coassignment_graph,
        leiden,
        member_knn,
        member_partitions,
        neighbourhood_jaccard,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=36)
    parser.add_argument("--cells", type=int, default=18641)
    parser.add_argument("--dim", type=int, default=10)
    args = parser.parse_args()
    z = planted(args.members, args.cells, args.dim)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = {}
    t = time.perf_counter()
    idx, dist = member_knn(z, 15)
    times["kNN graphs"] = time.perf_counter() - t
    t = time.perf_counter()
    cells = neighbourhood_jaccard(idx)
    times["neighbourhood Jaccard"] = time.perf_counter() - t
    t = time.perf_counter()
    parts = member_partitions(idx, dist, 1.0, 0)
    times["Leiden per member"] = time.perf_counter() - t
    t = time.perf_counter()
    consensus = leiden(coassignment_graph(parts, idx), 1.0, 0)
    table, _ = cluster_table(consensus, parts)
    times["consensus + table"] = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.members} members x {args.cells:,} cells x {args.dim} dims; "
        f"peak RSS {peak:,.0f} MB (codes and libraries loaded: {base_rss:,.0f} MB)"
    )
    print("| step | seconds |\n| --- | --- |")
    for k, v in times.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| total | {sum(times.values()):.1f} |")
    print(
        f"mean neighbourhood stability {cells.mean():.3f}; {len(table)} consensus "
        f"clusters, {int((~table['reproducible']).sum())} not reproducible"
    )


if __name__ == "__main__":
    main()
