"""The paper draft's DE experiment: is the ensemble's FDR estimate right, against the truth?

Per preset and repetition (the repetition is the seed of the data and of every model):

- a deep ensemble of 10 scVI networks; the ensembles of 1, 3 and 5 are its first 1, 3
  and 5 members (members of a deep ensemble are independent networks, so the first k of
  10 are an ensemble of k; this saves training 1 + 3 + 5 more networks);
- BatchEnsemble and Hyper-BatchEnsemble with 4 members;
- single VAEs with 2x and 4x the hidden units;
- scvi-tools' own ``differential_expression(mode="change")`` run on member 0 of the deep
  ensemble (``model.members[0]`` runs scvi-tools' code on that scVI network);
- scanpy's ``rank_genes_groups`` (Wilcoxon, Benjamini-Hochberg) on log-normalised counts,
  as is, and with the usual extra filter ``|logfoldchange| >= delta``.

Every model-based method is scored with the default DE (the ``counts`` estimand,
:mod:`ensemblevi.model.base._de_counts`, strata from that model's population-estimand
draws) and the posterior expected FDR rule, B against A, against the simulator's
population ground truth ``var["is_de_B_vs_A"]`` at the same ``delta``; the deep ensemble
is also scored on its own posterior (``model alone (population)``, the earlier default).

With ``pbmc3k.h5ad`` two real-count data sets join the presets (:mod:`._thinning`):
``pbmc_thinning`` (two random halves of the CD4 T cells, DE made by binomial thinning,
truth on normalised expected expression) and ``pbmc_null`` (the same halves, no thinning:
every call is false, so its metric is the fraction of genes called, ``frac@t``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ensemblevi._seeding import seeded_globally

from ._runs import cached, save, settings_of, train_timed
from ._scoring import GRID, TARGETS, MethodResult, fdr_curve, score_method
from ._thinning import THINNING_DATASETS, load_thinning

PRESETS = ("lopez2020", "draft", "hard")
#: epochs per preset (at ``lr``); ``hard`` has 400 cells, so more epochs for its few steps
EPOCHS = {"lopez2020": 120, "draft": 100, "hard": 150, "pbmc_thinning": 150, "pbmc_null": 150}
#: learning rates that differ from ``FDRConfig.lr``: real counts at scvi-tools' default
LRS = {"pbmc_thinning": 1e-3, "pbmc_null": 1e-3}
BATCH_KINDS = ("batch", "hyperbatch")
DEEP_SIZES = (1, 3, 5, 10)


@dataclass
class FDRConfig:
    """Settings of the FDR suite (``quick`` shrinks everything for a smoke test).

    Attributes
    ----------
    presets
        Simulator presets.
    reps
        Repetitions (data seeds 0..reps-1).
    epochs
        Training epochs per preset.
    lr
        Learning rate.
    n_hidden
        Hidden units of the 1x models.
    n_samples
        Posterior draws per member.
    delta
        Smallest |LFC| (log2) that counts as DE.
    data_overrides
        Simulator parameters that override the preset's.
    deep_sizes
        Deep ensemble sizes (the first k members of one deep ensemble).
    wide
        Width factors of the wider single VAEs.
    members
        Members of the BatchEnsemble and Hyper-BatchEnsemble.
    datasets
        Real-count data sets (:data:`THINNING_DATASETS`), run after the presets when the
        suite has ``pbmc3k.h5ad`` and skipped with the reason otherwise.
    lrs
        Per preset or data set, a learning rate other than ``lr``.
    thinning
        Arguments of :func:`~._thinning.thinning_dataset` / ``null_split`` (e.g.
        ``max_cells``, ``n_top_genes``).
    batch_kinds
        Which of BatchEnsemble (``"batch"``) and Hyper-BatchEnsemble (``"hyperbatch"``)
        run.
    """

    presets: tuple[str, ...] = PRESETS
    reps: int = 5
    epochs: dict = field(default_factory=lambda: dict(EPOCHS))
    lr: float = 5e-3
    n_hidden: int = 128
    n_samples: int = 50
    delta: float = 0.5
    data_overrides: dict = field(default_factory=dict)
    deep_sizes: tuple[int, ...] = DEEP_SIZES
    wide: tuple[int, ...] = (2, 4)
    members: int = 4
    datasets: tuple[str, ...] = THINNING_DATASETS
    lrs: dict = field(default_factory=lambda: dict(LRS))
    thinning: dict = field(default_factory=dict)
    batch_kinds: tuple[str, ...] = BATCH_KINDS

    def lr_of(self, name: str) -> float:
        """The learning rate of preset or data set ``name``.

        Parameters
        ----------
        name
            Preset or data set.
        """
        return float(self.lrs.get(name, self.lr))

    @classmethod
    def quick(cls, **kw) -> FDRConfig:
        tiny = {
            "reps": 1,
            "presets": ("lopez2020", "hard"),
            "n_samples": 4,
            "epochs": dict.fromkeys(PRESETS, 4),
            "deep_sizes": (1, 2),
            "wide": (2,),
            "members": 2,
            "data_overrides": {"n_cells": 200, "n_genes": 40},
            "thinning": {"max_cells": 200, "n_top_genes": 60},
        }
        tiny["epochs"].update(dict.fromkeys(THINNING_DATASETS, 4))
        return cls(**{**tiny, **kw})


def _bayes(draws: np.ndarray, delta: float) -> MethodResult:
    g = draws.shape[-1]
    return MethodResult("bayes", np.mean(np.abs(draws.reshape(-1, g)) >= delta, axis=0))


def _wilcoxon(adata, delta: float) -> tuple[MethodResult, MethodResult]:
    import scanpy as sc

    norm = sc.AnnData(adata.layers["counts"].copy(), obs=adata.obs[["cell_type"]].copy())
    norm.var_names = adata.var_names
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.tl.rank_genes_groups(
        norm,
        "cell_type",
        groups=["B"],
        reference="A",
        method="wilcoxon",
        corr_method="benjamini-hochberg",
    )
    df = sc.get.rank_genes_groups_df(norm, "B").set_index("names").loc[adata.var_names]
    padj = df["pvals_adj"].to_numpy(dtype=np.float64)
    big = np.abs(df["logfoldchanges"].to_numpy(dtype=np.float64)) >= delta
    return MethodResult("bh", padj), MethodResult("bh", padj, mask=big)


def score(result: MethodResult, truth: np.ndarray) -> dict[str, float]:
    """:func:`score_method` plus ``frac@t`` (calls / genes); with no DE gene in ``truth``
    (the null split) AUROC, AUPRC and TPR are NaN and only the calls count.

    Parameters
    ----------
    result
        The method's answer.
    truth
        Boolean ground truth per gene.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.any() and not truth.all():
        out = score_method(result, truth)
    else:
        out = {"auroc": float("nan"), "auprc": float("nan")}
        for t in TARGETS:
            called, _ = result.calls(t)
            out[f"fdr@{t:g}"] = float(called.any()) if not truth.all() else 0.0
            out[f"tpr@{t:g}"] = float("nan")
            out[f"calls@{t:g}"] = int(called.sum())
        curve = fdr_curve(result, truth)
        out["fdr_l1"] = float(np.mean(np.abs(curve["expected_fdr"] - curve["true_fdr"])))
    for t in TARGETS:
        out[f"frac@{t:g}"] = out[f"calls@{t:g}"] / truth.size
    return out


def load(preset: str, rep: int, cfg: FDRConfig, pbmc: str | Path | None = None):
    """The data set of one unit: a simulator preset, or a :data:`THINNING_DATASETS` one
    (None without ``pbmc``).

    Parameters
    ----------
    preset
        Preset or data set.
    rep
        Repetition (the data seed).
    cfg
        Suite settings.
    pbmc
        ``pbmc3k.h5ad``.
    """
    from ensemblevi import data

    if preset in THINNING_DATASETS:
        return load_thinning(preset, pbmc, seed=rep, delta=cfg.delta, **cfg.thinning)
    return data.synthetic(preset, seed=rep, **cfg.data_overrides)


def run_rep(preset: str, rep: int, cfg: FDRConfig, log=print, pbmc=None, adata=None) -> dict:
    """Every method on one data set; returns a JSON-able record."""

    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model.base import _de_counts
    from ensemblevi.model.base._de_lfc import lfc_posterior

    adata = load(preset, rep, cfg, pbmc) if adata is None else adata
    lr = cfg.lr_of(preset)
    truth = adata.var["is_de_B_vs_A"].to_numpy(dtype=bool)
    batch_key = "batch" if adata.obs["batch"].nunique() > 1 else None
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key=batch_key)
    results: dict[str, MethodResult] = {}
    seconds: dict[str, float] = {}

    def draws(model):
        d, _ = lfc_posterior(
            model, adata, "cell_type", "B", "A", n_samples=cfg.n_samples, seed=rep, progress=False
        )
        return d

    ct = adata.obs["cell_type"].astype(str).to_numpy()
    sides = np.flatnonzero(ct == "B"), np.flatnonzero(ct == "A")

    def default(model, d):
        """The default DE (the ``counts`` estimand, strata from these members' draws)."""
        manager = model.get_anndata_manager(adata, required=True)
        table = _de_counts.counts_table(
            d, manager, *sides, cfg.delta, 0.05, adata.var_names, seed=rep
        )
        return MethodResult("bayes", table["proba_de"].to_numpy(dtype=np.float64))

    k_max = max(cfg.deep_sizes)
    deep, seconds[f"deep K={k_max}"] = train_timed(
        adata, "deep", k_max, rep, cfg.epochs[preset], lr, n_hidden=cfg.n_hidden
    )
    deep_draws = draws(deep)
    for k in cfg.deep_sizes:
        results[f"deep K={k}"] = default(deep, deep_draws[:k])
    results[f"model alone (population), deep K={k_max}"] = _bayes(deep_draws, cfg.delta)
    with seeded_globally(rep):  # scvi-tools' sampling seeded for the rep, restored after
        change = deep.members[0].differential_expression(
            adata,
            groupby="cell_type",
            group1="B",
            group2="A",
            mode="change",
            delta=cfg.delta,
            silent=True,
        )
    results["scvi-tools change (K=1)"] = MethodResult(
        "bayes", change.loc[adata.var_names, "proba_de"].to_numpy(dtype=np.float64)
    )
    log(f"    deep K={k_max}: {seconds[f'deep K={k_max}']:.0f} s")
    for kind, label in (("batch", "BatchEnsemble"), ("hyperbatch", "Hyper-BatchEnsemble")):
        if kind not in cfg.batch_kinds:
            continue
        name = f"{label} K={cfg.members}"
        model, seconds[name] = train_timed(
            adata, kind, cfg.members, rep, cfg.epochs[preset], lr, n_hidden=cfg.n_hidden
        )
        results[name] = default(model, draws(model))
        log(f"    {name}: {seconds[name]:.0f} s")
    for w in cfg.wide:
        name = f"single {w}x hidden"
        model, seconds[name] = train_timed(
            adata, "single", 1, rep, cfg.epochs[preset], lr, n_hidden=w * cfg.n_hidden
        )
        results[name] = default(model, draws(model))
        log(f"    {name}: {seconds[name]:.0f} s")
    results["Wilcoxon + BH"], results[f"Wilcoxon + BH, |LFC| >= {cfg.delta:g}"] = _wilcoxon(
        adata, cfg.delta
    )
    return {
        "preset": preset,
        "rep": rep,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_de": int(truth.sum()),
        "epochs": cfg.epochs[preset],
        "lr": lr,
        "data": dict(adata.uns.get("thinning", {})),
        "train_seconds": seconds,
        "truth": truth.astype(int).tolist(),
        "metrics": {m: score(r, truth) for m, r in results.items()},
        "curves": {m: fdr_curve(r, truth).to_dict(orient="list") for m, r in results.items()},
        "scores": {m: np.round(r.score, 6).tolist() for m, r in results.items()},
    }


def unit_settings(cfg: FDRConfig, preset: str) -> dict:
    """What a saved record of ``preset`` must match to be reused: the settings that shape
    it (a simulator preset's record ignores the real-count data sets' settings, so records
    saved before those existed are still reused).

    Parameters
    ----------
    cfg
        Suite settings.
    preset
        Preset or data set.
    """
    settings = settings_of(cfg, drop=("presets", "reps", "datasets"))
    if preset not in THINNING_DATASETS:
        settings["epochs"] = {
            k: v for k, v in settings["epochs"].items() if k not in THINNING_DATASETS
        }
        for key in ("lrs", "thinning"):
            settings.pop(key)
        if tuple(cfg.batch_kinds) == BATCH_KINDS:
            settings.pop("batch_kinds")
    return settings


def run(out: Path, cfg: FDRConfig, log=print, train: bool = True, pbmc=None) -> list[dict]:
    """All repetitions x presets (then x the real-count data sets when ``pbmc`` is
    ``pbmc3k.h5ad``), repetition-major (an interrupted suite has every preset at nearly the
    same number of repetitions); each record is saved as it finishes and reused on a rerun
    with the same settings. ``train=False`` only collects saved records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = (*cfg.presets, *cfg.datasets)
    have_pbmc = pbmc is not None and Path(pbmc).exists()
    if cfg.datasets and not have_pbmc:
        log(f"  {', '.join(cfg.datasets)}: skipped (no pbmc3k.h5ad; pass --pbmc PATH)")
    records = []
    for rep in range(cfg.reps):
        for preset in names:
            path = out / f"{preset}_rep{rep}.json"
            settings = unit_settings(cfg, preset)
            rec = cached(path, settings)
            if rec is not None:
                log(f"  {preset} rep {rep}: reusing {path}")
            elif not train:
                log(f"  {preset} rep {rep}: not run yet, left out")
                continue
            elif preset in THINNING_DATASETS and not have_pbmc:
                continue
            else:
                log(f"  {preset} rep {rep}:")
                t = time.perf_counter()
                rec = {**run_rep(preset, rep, cfg, log, pbmc=pbmc), "settings": settings}
                rec["seconds"] = time.perf_counter() - t
                save(path, rec)
            records.append(rec)
    order = {p: i for i, p in enumerate(names)}
    return sorted(records, key=lambda r: (order[r["preset"]], r["rep"]))


def summarise(records: list[dict]) -> pd.DataFrame:
    """Mean and standard deviation over repetitions of every metric, per preset x method."""
    rows = [
        {"preset": r["preset"], "rep": r["rep"], "method": m, **vals}
        for r in records
        for m, vals in r["metrics"].items()
    ]
    long = pd.DataFrame(rows)
    order = list(dict.fromkeys(long["method"]))
    g = long.drop(columns="rep").groupby(["preset", "method"], sort=False)
    mean, std = g.mean(), g.std(ddof=1)
    frame = mean.join(std, rsuffix="_sd")
    frame["n_reps"] = g.size()
    frame = frame.reset_index()
    presets = list(dict.fromkeys(long["preset"]))
    frame["preset"] = pd.Categorical(frame["preset"], presets, ordered=True)
    frame["method"] = pd.Categorical(frame["method"], order, ordered=True)
    return frame.sort_values(["preset", "method"]).reset_index(drop=True)


def curves(records: list[dict]) -> pd.DataFrame:
    """The FDR curves of every repetition in long form (preset, rep, method, target, ...)."""
    frames = []
    for r in records:
        for m, c in r["curves"].items():
            f = pd.DataFrame(c)
            f.insert(0, "method", m)
            f.insert(0, "rep", r["rep"])
            f.insert(0, "preset", r["preset"])
            frames.append(f)
    return pd.concat(frames, ignore_index=True)


__all__ = [
    "GRID",
    "THINNING_DATASETS",
    "FDRConfig",
    "curves",
    "load",
    "run",
    "run_rep",
    "score",
    "summarise",
    "unit_settings",
]
