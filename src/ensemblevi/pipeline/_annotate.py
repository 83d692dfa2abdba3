"""``ensemblevi annotate``: cell types transferred by an ensemble scANVI, with their
confidence, the cells of unknown type, and how well calibrated the probabilities are.

A share of the labelled cells (``holdout``, stratified by type) has its labels hidden from
training; the predictions on them measure accuracy and calibration on labels the model
never learned from. The unknown rule is calibrated on the validation split's labelled
cells, which the classifier does not train on either. The input file is only read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ensemblevi._files import staged_output, write_csv, write_json
from ensemblevi._interrupt import set_resume_hint
from ensemblevi._warnings import quiet_third_party
from ensemblevi.pipeline._readings import threshold_text
from ensemblevi.pipeline._report import write_report

Log = Callable[[str], Any]
#: ``obs`` column of the labels the model trained with (the held-out ones hidden)
TRAIN_LABELS = "ensemblevi_training_labels"
#: ``obs`` column: the cell's label was hidden from training to measure the predictions
HELD_OUT = "ensemblevi_label_held_out"


@dataclass
class AnnotateResult:
    """Cells annotated by an ensemble scANVI.

    Parameters
    ----------
    adata
        The cells (HVGs) with the predictions in ``obs``/``obsm`` and ``uns``.
    model
        The trained :class:`~ensemblevi.model.EnsembleSCANVI`.
    calibration
        ``tl.label_calibration``'s output on the held-out cells (``None`` without any).
    reading
        The report's sentences.
    """

    adata: AnnData
    model: Any
    calibration: dict | None
    reading: list[str]


def hide_labels(labels: pd.Series, unlabeled: str, holdout: float, seed: int) -> np.ndarray:
    """A mask of ``holdout`` of each labelled type's cells (at least one where it has 2+;
    none with ``holdout=0``).

    Parameters
    ----------
    labels
        The cells' labels.
    unlabeled
        The value of unlabelled cells (never held out).
    holdout
        Share of each type's cells to hide.
    seed
        Seed of the choice.
    """
    rng = np.random.default_rng(seed)
    values = labels.astype(str).to_numpy()
    mask = np.zeros(len(values), dtype=bool)
    for t in np.unique(values[values != str(unlabeled)]):
        idx = np.flatnonzero(values == t)
        n = max(round(holdout * len(idx)), 1) if holdout > 0 and len(idx) > 1 else 0
        mask[rng.choice(idx, n, replace=False)] = True
    return mask


def annotate_reading(info: dict, calib: dict | None, n_held: int) -> list[str]:
    """The report's sentences on the predictions, the unknown cells and the calibration.

    Parameters
    ----------
    info
        ``uns[key]["label_uncertainty"]``.
    calib
        ``tl.label_calibration``'s output on the held-out cells, or ``None``.
    n_held
        Cells whose labels were hidden.
    """
    lines = []
    if calib is not None:
        s = calib["summary"]
        side = "surer" if s["mean_confidence"] > s["accuracy"] else "less sure"
        lines.append(
            f"On {n_held:,} cells whose labels were hidden from training, the ensemble's type "
            f"is right for {s['accuracy']:.1%}, with a mean confidence of "
            f"{s['mean_confidence']:.1%} ({side} than right; ECE {s['ece']:.3f}, "
            f"NLL {s['nll']:.3f})."
        )
        per = pd.DataFrame(calib["per_type"])
        over = per[pd.to_numeric(per["overconfidence"], errors="coerce") > 0.05]
        for _, row in over.iterrows():
            lines.append(
                f"{row['cell_type']}: its calls are surer ({row['confidence']:.2f}) than right "
                f"({row['precision']:.2f}); treat them with care."
            )
    rate = info.get("calibration_fpr", float("nan"))
    lines.append(
        f"{info['n_unknown']:,} of {info['n_cells']:,} cells are called unknown: their "
        f"{info['score'].replace('_', ' ')} is above what {info['alpha']:.0%} of held-out "
        f"labelled cells of known types reach (measured on them: {rate:.1%}). They may be a "
        "type the labels do not have, doublets, or poor-quality cells."
    )
    if info.get("n_untested"):
        lines.append(
            f"{info['n_untested']:,} of the cells were trained on and are never called "
            f"unknown by {info['score'].replace('_', ' ')} (its scores are biased on them); "
            "only the others were tested. --score entropy tests every cell."
        )
    if info.get("novelty_model") == "EnsembleSCVI":
        lines.append(
            "The unknown calls are the scVI ensemble's novelty flags (its latent space, "
            "the counts' principal components and how well its decoders fit the counts), "
            "not scANVI's: scANVI's latent space is "
            "trained to separate the known labels and folds an unseen type onto them."
        )
    if "calibration_kind" in info:
        lines.append(
            f"Calibration: {info['calibration_kind']} "
            f"({info.get('n_calibration_cells', info.get('n_calibration', 0)):,} "
            f"cells); the rate holds for {info['rate_holds_for']}.{threshold_text(info)}"
        )
    return lines


def run_annotate(
    data: str | Path,
    out: str | Path,
    labels_key: str,
    unlabeled_category: str = "Unknown",
    holdout: float = 0.2,
    layer: str | None = None,
    batch_key: str | None = None,
    ensemble: str = "deep",
    members: int = 4,
    epochs: int = 60,
    scanvi_epochs: int = 20,
    n_top_genes: int = 1200,
    alpha: float = 0.05,
    score: str = "entropy",
    seed: int = 0,
    force: bool = False,
    log: Log = print,
    sample_key: str | None = None,
) -> AnnotateResult:
    """Train an ensemble scANVI on a labelled data set and write its annotation into ``out``.

    Writes ``results.h5ad`` (the cells with ``obs[ensemblevi_label*]``, ``obsm``
    probabilities and ``uns["ensemblevi"]``), ``tables/labels.csv`` (per cell),
    ``tables/label_calibration.csv`` (per type), ``tables/confusion.csv``,
    ``figures/label_calibration.png``, ``figures/label_confusion.png``,
    ``figures/label_umap.png``, ``model/``, ``annotate.json`` and ``report.html``, staged and
    committed at once; an earlier annotation in ``out`` stays whole until then.

    Parameters
    ----------
    data
        ``.h5ad`` / 10x file with raw counts and ``obs[labels_key]`` (only read).
    out
        Output directory: new, empty, or an earlier ``ensemblevi annotate``'s (replaced
        only with ``force``).
    labels_key
        ``obs`` column of the cell types.
    unlabeled_category
        Its value for cells of unknown type (they are predicted, not trained on).
    holdout
        Share of each type's labelled cells whose labels are hidden, to measure accuracy
        and calibration (0: none).
    layer
        Layer with the counts (``None``: ``X``).
    batch_key
        ``obs`` column of the batches.
    ensemble, members
        Ensemble kind and size.
    epochs, scanvi_epochs
        Epochs of the scVI ensemble, then of its scANVI fine-tuning.
    n_top_genes
        Highly variable genes kept.
    alpha
        Target rate of known-type cells called unknown.
    score
        Score of the unknown rule (see :func:`ensemblevi.tl.label_uncertainty`). Here the
        default stays ``"entropy"``: scANVI trains on the unlabelled cells too, and
        ``"novelty_knn"`` never tests a cell the model trained on. A distance score
        (``"novelty_combined"``, ``"novelty_knn"``) is decided by the scVI ensemble's
        novelty rule (the scANVI keeps it as ``source_scvi``, and ``model/`` holds both),
        not in scANVI's latent space.
    seed
        Seed of the held-out choice, the training and the UMAP.
    force
        Replace an earlier annotation in ``out``.
    log
        Where progress notes go.
    sample_key
        ``obs`` column of the samples: a quarter of them (at least 1) are kept out of
        training (:func:`ensemblevi.tl.sample_split`) and the unknown rule is calibrated on
        them, so its rate is that of a new sample; ``None``: held-out cells at random, whose
        rate holds for new cells of the same samples.
    """
    from ensemblevi import tl
    from ensemblevi.data import preprocess, read
    from ensemblevi.data._validate import check_labels_column
    from ensemblevi.model import EnsembleSCANVI, EnsembleSCVI
    from ensemblevi.tl._labels import SCORES

    if not 0 <= holdout < 1 or not 0 < alpha < 1:
        raise ValueError(
            f"--holdout is a share in [0, 1) and --alpha a rate in (0, 1), got "
            f"{holdout} and {alpha}."
        )
    if epochs < 1 or scanvi_epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs} and {scanvi_epochs}.")
    if score not in SCORES:
        raise ValueError(f"--score must be one of {', '.join(SCORES)}, got {score!r}.")
    out_path = Path(out)
    adata = read(data, layer=layer)
    for option, column in (
        ("--labels-key", labels_key),
        ("--batch-key", batch_key),
        ("--sample-key", sample_key),
    ):
        if column is not None and column not in adata.obs:
            raise ValueError(
                f"{option} {column!r} is not a column of obs "
                f"({', '.join(map(str, adata.obs.columns[:8])) or 'none'})."
            )
    check_labels_column(adata, labels_key, "--labels-key")  # 1,000 floats are not 1,000 types
    labels = (
        adata.obs[labels_key]
        .astype(object)
        .where(adata.obs[labels_key].notna(), unlabeled_category)
    )
    known = sorted(set(labels.astype(str)) - {unlabeled_category})
    if len(known) < 2:
        raise ValueError(
            f"obs[{labels_key!r}] has {len(known)} cell type(s) besides "
            f"{unlabeled_category!r}; label transfer needs at least 2."
        )
    if "unknown" in known:  # the call of a cell the rule rejects: it must stay unambiguous
        raise ValueError(
            f"obs[{labels_key!r}] has a cell type named 'unknown', the name of the "
            "call for cells of no known type; rename it (or pass it as "
            "--unlabeled-category 'unknown' if it means unlabelled cells)."
        )
    t0 = time.perf_counter()
    with staged_output(out_path, "annotate", replace=force) as dest:
        set_resume_hint(f"Nothing was lost: {data} and {out_path} are unchanged; rerun.")
        preprocess(adata, n_top_genes=n_top_genes, batch_key=batch_key, layer=layer)
        held = hide_labels(labels, unlabeled_category, holdout, seed)
        adata.obs[labels_key] = labels.astype(str).to_numpy()
        adata.obs[TRAIN_LABELS] = np.where(held, unlabeled_category, adata.obs[labels_key])
        adata.obs[HELD_OUT] = held
        log(
            f"{adata.n_obs:,} cells, {len(known)} types; labels of {held.sum():,} cells hidden "
            f"to measure the predictions; {members}-member {ensemble} ensemble: {epochs} + "
            f"{scanvi_epochs} epochs"
        )
        EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key=batch_key)
        vae = EnsembleSCVI(adata, n_members=members, ensemble=ensemble, seed=seed)
        split = (
            {}
            if sample_key is None
            else {
                "datasplitter_kwargs": tl.sample_split(adata, sample_key, seed=seed)[
                    "datasplitter_kwargs"
                ]
            }
        )
        vae.train(max_epochs=epochs, seed=seed, **split)
        model = EnsembleSCANVI.from_ensemble_scvi(vae, unlabeled_category, labels_key=TRAIN_LABELS)
        model.train(max_epochs=scanvi_epochs, seed=seed, **split)
        train_s = time.perf_counter() - t0
        # a distance score is decided by the scVI ensemble's novelty rule (the model keeps
        # it as source_scvi): scANVI's latent space folds an unseen type onto the labelled
        # ones (docs/new_samples.md)
        info = tl.label_uncertainty(model, adata, alpha=alpha, score=score, sample_key=sample_key)
        calib = tl.label_calibration(adata, labels_key, mask=held) if held.any() else None
        with quiet_third_party():
            tl.expression_umap(model, adata, seed=seed)
        reading = annotate_reading(info, calib, int(held.sum()))
        record = {
            "data": str(data),
            "labels_key": labels_key,
            "unlabeled_category": unlabeled_category,
            "holdout": holdout,
            "n_held_out": int(held.sum()),
            "ensemble": ensemble,
            "members": members,
            "epochs": epochs,
            "scanvi_epochs": scanvi_epochs,
            "alpha": alpha,
            "score": score,
            "seed": seed,
            "n_cells": adata.n_obs,
            "sample_key": sample_key,
            "calibration_kind": info.get("calibration_kind"),
            "threshold": info["threshold"],
            "n_unknown": info["n_unknown"],
            "time.train (s)": round(train_s, 1),
            "time.total (s)": round(time.perf_counter() - t0, 1),
        }
        if calib is not None:
            record.update({f"held_out.{k}": v for k, v in calib["summary"].items()})
        _write(dest.stage, adata, model, calib, labels_key, reading, record)
    set_resume_hint(None)
    return AnnotateResult(adata, model, calib, reading)


def _cell_table(adata: AnnData, labels_key: str) -> pd.DataFrame:
    cols = [
        "label",
        "label_call",
        "label_confidence",
        "label_entropy",
        "label_mutual_information",
        "label_agreement",
        "label_unknown",
    ]
    table = pd.DataFrame({c: adata.obs[f"ensemblevi_{c}"] for c in cols}, index=adata.obs_names)
    table.insert(0, "given_label", adata.obs[labels_key].astype(str))
    table.insert(1, "held_out", adata.obs[HELD_OUT].to_numpy())
    table.index.name = "cell"
    return table


def _write(
    stage: Path,
    adata: AnnData,
    model,
    calib: dict | None,
    labels_key: str,
    reading: list[str],
    record: dict,
) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    from ensemblevi import pl
    from ensemblevi.data._io import write_h5ad_atomic
    from ensemblevi.pl._utils import save_figure, style
    from ensemblevi.tl._embedding import UMAP_KEY

    figs = stage / "figures"
    with style():
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0), layout="constrained")
        for ax, color, title in zip(
            axes,
            ["ensemblevi_label_call", "ensemblevi_label_confidence", "ensemblevi_label_entropy"],
            ["predicted type (or unknown)", "confidence", "predictive entropy"],
            strict=True,
        ):
            sc.pl.embedding(
                adata, basis=UMAP_KEY, color=color, ax=ax, show=False, title=title, frameon=False
            )
        save_figure(fig, figs / "label_umap")
        plt.close(fig)
    sections = [
        (
            "Predicted types",
            [
                "Each cell's type is the ensemble's (the members' mean probabilities); cells "
                "called "
                "unknown are above the calibrated threshold of the unknown rule.",
                figs / "label_umap.png",
                adata.obs["ensemblevi_label_call"]
                .value_counts()
                .rename_axis("call")
                .rename("cells")
                .reset_index(),
            ],
        )
    ]
    if calib is not None:
        for name, draw in {
            "label_calibration": pl.label_calibration,
            "label_confusion": pl.label_confusion,
        }.items():
            fig = draw(adata, return_fig=True)
            save_figure(fig, figs / name)
            plt.close(fig)
        per = pd.DataFrame(calib["per_type"])
        write_csv(per, stage / "tables" / "label_calibration.csv")
        write_csv(pd.DataFrame(calib["confusion"]), stage / "tables" / "confusion.csv")
        summary = pd.DataFrame([calib["summary"]]).drop(columns=["truth_key"])
        sections += [
            (
                "Are the probabilities calibrated?",
                [
                    "On the cells whose labels were hidden: accuracy against confidence in 15 "
                    "bins (bars against the diagonal) and, per type, how much surer its calls "
                    "are than right.",
                    figs / "label_calibration.png",
                    summary,
                    per.round(3),
                ],
            ),
            ("Confusion", [figs / "label_confusion.png"]),
        ]
    write_csv(_cell_table(adata, labels_key), stage / "tables" / "labels.csv")
    model.save(str(stage / "model"), save_anndata=False, overwrite=True)
    write_h5ad_atomic(adata, stage / "results.h5ad", overwrite=True)
    write_json(stage / "annotate.json", {**record, "reading": reading})
    write_report(
        stage / "report.html",
        "ensemblevi annotate report",
        reading,
        sections,
        {
            "summary": f"{record['n_cells']:,} cells, {record['members']}-member "
            f"{record['ensemble']} ensemble scANVI",
            **record,
        },
    )
