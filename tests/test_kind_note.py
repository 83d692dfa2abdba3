"""A cheap kind asked a seed-spread question warns once and says so in ``uns`` (issue 35)."""

from __future__ import annotations

import warnings

import pytest
from conftest import private_copy

import ensemblevi as ev
from ensemblevi.tl import _kind_note
from ensemblevi.tl._kind_note import CHEAP_KINDS, SEED_AGREEMENT, kind_note, note_text


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(_kind_note, "_WARNED", set())


def test_note_quotes_the_measured_agreement():
    text = note_text("batch")
    for scores in SEED_AGREEMENT.values():
        if "batch" in scores:
            assert f"batch {scores['batch']:g} against deep {scores['deep']:g}" in text
    assert "0.53" in text and "0.8" in text  # PBMC neighbourhoods: batch 0.53, deep 0.80
    assert "hyperbatch 0.5 against deep 0.8" in note_text("hyperbatch")
    assert "mcdropout 0.763 against deep 0.774" in note_text("mcdropout")


@pytest.mark.parametrize("kind", ["batch", "mcdropout", "hyperbatch"])
def test_cheap_kinds_warn_once_and_record(kind_models, kind):
    if kind not in kind_models:
        pytest.skip(f"no session model of kind {kind}")
    model = kind_models[kind]
    adata = private_copy(model).adata
    with pytest.warns(UserWarning, match="share weights") as caught:
        ev.tl.gene_uncertainty(model, adata, n_samples=2, progress=False)
    assert sum("share weights" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same question again: no second warning
        kind_note(model, adata, "gene_uncertainty")
    note = adata.uns["ensemblevi"]["kind_note"]
    assert note["kind"] == kind and note["questions"] == ["gene_uncertainty"]
    assert note["note"] == note_text(kind)
    kind_note(model, adata, "marker_stability")
    assert adata.uns["ensemblevi"]["kind_note"]["questions"] == [
        "gene_uncertainty",
        "marker_stability",
    ]


def test_deep_and_single_are_silent(kind_models):
    assert set(CHEAP_KINDS) == {"batch", "hyperbatch", "mcdropout"}
    model = kind_models["deep"]
    adata = private_copy(model).adata
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert kind_note(model, adata, "expression_spread") is None
    assert "kind_note" not in adata.uns.get("ensemblevi", {})
