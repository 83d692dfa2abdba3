"""Where the model-free sample-aware test's FDR lands: many repetitions, no training.

The ``counts`` method of the sample-aware DE (``ensemblevi.model.base._de_samples``) needs
no model, so its calibration can be measured on many more repetitions than
``bench_de_replicates.py`` trains models for. Per repetition (data seed), on
:func:`ensemblevi.data.synthetic_replicates` (between: 16 samples, 8 per condition;
paired: 8 samples), k samples per side (pairs), 20% of genes changed: the true FDR and
TPR at BH targets 5/10/20% of each p-value adjustment in :data:`ADJUST`.

Run: ``PYTHONPATH=src python benchmarks/de_sample_fdr.py --reps 20``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TARGETS = (0.05, 0.1, 0.2)


def _units(adata, k: int, design: str, rng):
    from ensemblevi.model.base import _de_samples as S

    samples = adata.obs["sample"].astype(str).to_numpy()
    cond = adata.obs["condition"].astype(str).to_numpy()
    if design == "paired":
        names = list(rng.permutation(adata.obs["sample"].cat.categories))[:k]
        keep = np.isin(samples, names)
        c1, c2 = np.flatnonzero(keep & (cond == "stim")), np.flatnonzero(keep & (cond == "ctrl"))
    else:
        stim = sorted(set(samples[cond == "stim"]))
        ctrl = sorted(set(samples[cond == "ctrl"]))
        s1, s2 = list(rng.permutation(stim))[:k], list(rng.permutation(ctrl))[:k]
        c1, c2 = np.flatnonzero(np.isin(samples, s1)), np.flatnonzero(np.isin(samples, s2))
    return S.make_units(samples, c1, c2, design=design, min_cells=10)


def unit(rep: int, design: str, ks, sd: float, de_frac: float) -> dict:
    from ensemblevi.data import synthetic_replicates
    from ensemblevi.model.base import _de_samples as S
    from ensemblevi.model.base._de_moderated import adjust

    adata = synthetic_replicates(
        n_cells=1600,
        n_genes=400,
        n_samples=16 if design == "between" else 8,
        design=design,
        sample_sd=sd,
        response_sd=0.1 if design == "paired" else 0.0,
        de_frac=de_frac,
        seed=1000 + rep,
    )
    truth = adata.var["is_de_stim_vs_ctrl"].to_numpy(bool)
    rng = np.random.default_rng([rep, 11])
    out = {}
    for k in ks:
        units = _units(adata, k, design, rng)
        sums, libs = S.pseudobulk(adata.layers["counts"], units.cells1 + units.cells2)
        res = S.sample_test(sums, libs, units.n1, units.design)
        for name in ("bh", "storey"):
            padj = adjust(res["pval"], name, n_min=units.n_min)
            row = {}
            for t in TARGETS:
                calls = padj <= t
                row[f"calls@{t:g}"] = int(calls.sum())
                row[f"fdr@{t:g}"] = float((calls & ~truth).sum() / max(calls.sum(), 1))
                row[f"tpr@{t:g}"] = float((calls & truth).sum() / max(truth.sum(), 1))
            out[f"k={k} {name}"] = row
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--design", default="between")
    ap.add_argument("--sd", type=float, default=0.3)
    ap.add_argument("--de-frac", type=float, default=0.2)
    ap.add_argument("--out", default=None, help="write the records (JSON) here")
    args = ap.parse_args(argv)
    ks = (2, 3, 4, 8)
    t0 = time.perf_counter()
    recs = [unit(r, args.design, ks, args.sd, args.de_frac) for r in range(args.reps)]
    print(f"{args.design}, sd {args.sd}, {args.reps} reps, {time.perf_counter() - t0:.0f} s")
    print("| k, adjustment | true FDR at 5 / 10 / 20% | TPR at 5 / 10 / 20% | calls at 5% |")
    print("|---|---|---|---|")
    for key in recs[0]:
        fdr = " / ".join(f"{np.mean([r[key][f'fdr@{t:g}'] for r in recs]):.3f}" for t in TARGETS)
        tpr = " / ".join(f"{np.mean([r[key][f'tpr@{t:g}'] for r in recs]):.2f}" for t in TARGETS)
        calls = np.mean([r[key]["calls@0.05"] for r in recs])
        print(f"| {key} | {fdr} | {tpr} | {calls:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(recs))


if __name__ == "__main__":
    main()
