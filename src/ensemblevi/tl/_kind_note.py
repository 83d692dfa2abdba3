"""What a cheap ensemble kind's spread answers, said where a seed-spread question is asked.

BatchEnsemble (``batch``), Hyper-BatchEnsemble (``hyperbatch``) and MC dropout
(``mcdropout``) members share most of their weights: their spread says how much *one
trained model* moves (its rank-1 factors, its hyperparameters, its dropout masks), not how
much independently trained seeds differ. The questions "how far would retraining move this
expression value / gene / marker" are seed-spread questions, and on them these kinds were
measured against 36 independently trained scVI seeds (``docs/benchmarks.md``, sections
"One ensemble model against 36 scVI seeds" and "Agreement with 36 scVI seeds, PBMC 3k"):

* per-cell neighbourhood stability, Spearman with the 36 seeds (PBMC 3k, 60 epochs):
  deep 0.80, batch 0.53, hyperbatch 0.50 (``benchmarks/bench_stability.py``);
* per (cell, marker) expression std, Spearman with the 36 seeds (PBMC 3k, 80 epochs):
  deep 0.774, batch 0.737, mcdropout 0.763 (``benchmarks/bench_seed_agreement.py``);
  heartlike: deep 0.930, batch 0.957, mcdropout 0.935.

A hand-written note (scvi-tools has no such check): warned once per kind and question in
a process, and stored in ``uns`` so a saved result says it too.
"""

from __future__ import annotations

import warnings

from anndata import AnnData

from ensemblevi._constants import DEFAULT_KEY

#: kinds whose members share weights (their spread is not a spread across seeds)
CHEAP_KINDS = ("batch", "hyperbatch", "mcdropout")

#: measured agreement with 36 independently trained scVI seeds (docs/benchmarks.md)
SEED_AGREEMENT = {
    "neighbourhood (PBMC 3k, per cell)": {"deep": 0.80, "batch": 0.53, "hyperbatch": 0.50},
    "marker expression std (PBMC 3k)": {"deep": 0.774, "batch": 0.737, "mcdropout": 0.763},
    "marker expression std (heartlike)": {"deep": 0.930, "batch": 0.957, "mcdropout": 0.935},
}

_WARNED: set[tuple[str, str]] = set()


def note_text(kind: str) -> str:
    """The note for ``kind``: what its spread answers, with the measured agreement.

    Parameters
    ----------
    kind
        A cheap ensemble kind (one of :data:`CHEAP_KINDS`).
    """
    measured = "; ".join(
        f"{what}: {kind} {scores[kind]:g} against deep {scores['deep']:g}"
        for what, scores in SEED_AGREEMENT.items()
        if kind in scores
    )
    return (
        f"A {kind} ensemble's members share weights: their spread answers 'how much would "
        "one trained model move', not 'how much do independently trained seeds differ'. "
        f"Agreement with 36 independently trained scVI seeds (Spearman; {measured}). "
        "For the spread across training runs, train a deep ensemble (ensemble='deep') or "
        "seeds (tl.seed_ensemble)."
    )


def kind_note(model, adata: AnnData, question: str, key_added: str = DEFAULT_KEY) -> str | None:
    """Warn (once) and record in ``uns`` when a cheap kind answers a seed-spread question.

    Parameters
    ----------
    model
        The ensemble model that answered (its ``ensemble`` attribute is the kind).
    adata
        Where the note is stored: ``adata.uns[key_added]["kind_note"]`` holds ``kind``,
        ``note`` and ``questions`` (every question answered with this kind).
    question
        What was asked (``"expression_spread"``, ``"gene_uncertainty"``,
        ``"marker_stability"``, ...).
    key_added
        ``uns`` key of the results.

    Returns
    -------
    The note, or ``None`` for a kind whose members are trained independently (deep,
    seeds) or a single model.

    Examples
    --------
    >>> kind_note(batch_model, adata, "expression_spread")  # doctest: +SKIP
    """
    kind = getattr(model, "ensemble", None)
    if kind not in CHEAP_KINDS:
        return None
    text = note_text(kind)
    if (kind, question) not in _WARNED:
        _WARNED.add((kind, question))
        warnings.warn(f"{question}: {text}", UserWarning, stacklevel=3)
    uns = adata.uns.setdefault(key_added, {})
    previous = uns.get("kind_note", {})
    questions = list(previous.get("questions", [])) if previous.get("kind") == kind else []
    if question not in questions:
        questions.append(question)
    uns["kind_note"] = {"kind": kind, "note": text, "questions": questions}
    return text
