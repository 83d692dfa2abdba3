"""Per cell type, the share of query cells the per-cell rule flags at 5% (PBMC 3k without B).

The models and split of ``bench_query_novelty.py`` (reference with one batch, the query
scored directly in the reference's batch), seeds 0-2, deep and BatchEnsemble K = 4: the
table behind the choice of the majority test in ``tl.group_novelty`` (docs/benchmarks.md,
"Group novelty over three seeds").

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_group_flag_rates.py --models <cache>``
(the cache of ``bench_query_novelty.py --models``; models missing there are trained).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_group_novelty import split_and_model


def main() -> None:
    import ensemblevi as ev

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbmc", default="../shared/data/pbmc3k.h5ad")
    parser.add_argument("--models", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=["deep", "batch"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows, counts = {}, None
    for seed in args.seeds:
        for kind in args.kinds:
            model, _, query, _ = split_and_model(
                args.pbmc, kind, seed, 150, 1e-3, args.models, batch=True
            )
            direct = query.copy()
            direct.obs["batch"] = "reference"
            ev.model.EnsembleSCVI.setup_anndata(direct, layer="counts", batch_key="batch")
            flags = ev.tl.cell_novelty(model, direct, alpha=0.05, progress=False)["is_novel"]
            types = direct.obs["cell_type"].astype(str).to_numpy()
            rows[f"{kind} s{seed}"] = flags.groupby(types).mean()
            counts = pd.Series(types).value_counts()
    table = pd.DataFrame(rows)
    table["n (last seed)"] = counts
    print(table.round(2).to_string())


if __name__ == "__main__":
    from ensemblevi._warnings import quiet_third_party

    with quiet_third_party(loggers=True):
        main()
