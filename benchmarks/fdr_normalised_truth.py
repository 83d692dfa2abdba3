"""Re-score the saved FDR suite results against a truth defined on normalised expression.

The simulator's truth (``var["is_de_B_vs_A"]``) is on absolute rates ``h``. Counts only
show relative expression: when many genes go up in B, normalising each cell to a fixed
total shifts every gene's LFC by the same amount (on ``draft``, about -0.34 log2), so a
null gene can look like a change of -0.34 +- 0.16 to every method that normalises
(every VAE here, and scanpy's ``normalize_total`` before Wilcoxon). This script rebuilds
each repetition's data, defines the truth the same way (median pairwise LFC, delta 0.5)
on the library-normalised true rates ``h / sum(h)``, and scores the saved per-gene
scores of every method against it, without retraining.

Run after the suite: ``.venv/bin/python benchmarks/fdr_normalised_truth.py [bench_results]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import ensemblevi as ev
from ensemblevi.benchmark._scoring import TARGETS, MethodResult, score_method
from ensemblevi.data._synthetic import _median_pair_lfc


def normalised_truth(adata, delta: float, seed: int) -> np.ndarray:
    h = np.asarray(adata.layers["true_rate"], dtype=np.float64)
    norm = h / h.sum(1, keepdims=True)
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    med = _median_pair_lfc(norm, ct == "B", ct == "A", 2000, np.random.default_rng(seed))
    return np.abs(med) >= delta


def result_from_scores(method: str, score: np.ndarray) -> MethodResult:
    """Invert ``MethodResult.score``: Bayes scores are p; BH scores are -log10 p_adj, and
    genes removed by the |LFC| filter carry negative scores."""
    if "Wilcoxon" not in method:
        return MethodResult("bayes", score)
    mask = score >= 0
    padj = np.where(mask, 10.0 ** -np.clip(score, 0, None), 1.0)
    return MethodResult("bh", padj, mask=mask if "LFC" in method else None)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_results") / "fdr"
    rows = []
    for path in sorted(root.glob("*_rep*.json")):
        rec = json.loads(path.read_text())
        delta = rec["settings"]["delta"]
        adata = ev.data.synthetic(
            rec["preset"], seed=rec["rep"], **rec["settings"]["data_overrides"]
        )
        truth = normalised_truth(adata, delta, rec["rep"])
        shift_nulls = int((truth != np.asarray(rec["truth"], bool)).sum())
        for method, score in rec["scores"].items():
            res = result_from_scores(method, np.asarray(score, dtype=np.float64))
            rows.append(
                {
                    "preset": rec["preset"],
                    "rep": rec["rep"],
                    "method": method,
                    "genes whose status changes": shift_nulls,
                    **score_method(res, truth),
                }
            )
    long = pd.DataFrame(rows)
    cols = ["auprc"] + [f"fdr@{t:g}" for t in TARGETS] + ["fdr_l1"]
    table = long.groupby(["preset", "method"], sort=False)[cols].mean().round(3)
    table["reps"] = long.groupby(["preset", "method"], sort=False).size()
    changed = long.groupby("preset", sort=False)["genes whose status changes"].mean()
    print("genes whose DE status differs between the two truths (mean over reps):")
    print(changed.round(1).to_string())
    print()
    print(table.to_string())


if __name__ == "__main__":
    main()
