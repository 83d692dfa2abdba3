"""EnsembleSCANVI: parity with scvi-tools' SCANVI, label uncertainty, the unknown rule and the
label calibration metrics (against loops and closed forms)."""

import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy.stats import entropy as scipy_entropy

import ensemblevi as ev
from ensemblevi.metrics import label_calibration_metrics, reliability_table
from ensemblevi.metrics._labels import (
    classwise_ece,
    confusion_table,
    expected_calibration_error,
    label_uncertainty_parts,
)
from ensemblevi.model import EnsembleSCANVI, EnsembleSCVI
from ensemblevi.module import EnsembleSCANVAE
from ensemblevi.module._from_scvi import load_scanvi_member

matplotlib.use("Agg")


# ------------------------------------------------------------------ metrics
def _random_probs(rng, n=300, c=5, sharp=3.0):
    logits = rng.normal(size=(n, c)) * sharp
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_ece_and_reliability_match_a_loop_over_bins():
    rng = np.random.default_rng(0)
    p = _random_probs(rng)
    y = rng.integers(0, 5, size=300)
    conf, pred = p.max(1), p.argmax(1)
    total, rows = 0.0, []
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = [i for i in range(300) if lo <= conf[i] < hi or (b == 14 and conf[i] == 1.0)]
        rows.append(len(inside))
        if inside:
            acc = np.mean([pred[i] == y[i] for i in inside])
            total += len(inside) / 300 * abs(acc - np.mean(conf[inside]))
    assert expected_calibration_error(p, y) == pytest.approx(total, abs=1e-12)
    assert reliability_table(p, y)["n_cells"].tolist() == rows


def test_classwise_ece_nll_brier_match_closed_forms():
    rng = np.random.default_rng(1)
    p = _random_probs(rng, n=200, c=4)
    y = rng.integers(0, 4, size=200)
    per = []
    for c in range(4):
        gap = 0.0
        for b in range(15):
            inside = [i for i in range(200) if min(int(p[i, c] * 15), 14) == b]
            gap += abs(sum(y[i] == c for i in inside) - sum(p[i, c] for i in inside))
        per.append(gap / 200)
    mean, each = classwise_ece(p, y)
    assert mean == pytest.approx(np.mean(per))
    np.testing.assert_allclose(each, per, atol=1e-12)
    m = label_calibration_metrics(p, y)
    assert m["classwise_ece"] == pytest.approx(np.mean(per))
    assert m["nll"] == pytest.approx(-np.mean([np.log(p[i, y[i]]) for i in range(200)]))
    brier = np.mean([sum((p[i, c] - (y[i] == c)) ** 2 for c in range(4)) for i in range(200)])
    assert m["brier"] == pytest.approx(brier)
    assert m["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    # a perfectly calibrated, perfectly sharp predictor
    onehot = np.eye(4)[y]
    perfect = label_calibration_metrics(onehot, y)
    assert perfect["ece"] == 0 and perfect["brier"] == 0 and perfect["accuracy"] == 1


def test_uncertainty_parts_match_scipy_and_vanish_for_identical_members():
    rng = np.random.default_rng(2)
    members = np.stack([_random_probs(rng, n=50, c=6) for _ in range(4)])
    parts = label_uncertainty_parts(members)
    mix = members.mean(0)
    for i in range(50):
        h = scipy_entropy(mix[i])
        eh = np.mean([scipy_entropy(members[k, i]) for k in range(4)])
        assert parts["entropy"][i] == pytest.approx(h, rel=1e-9)
        assert parts["expected_entropy"][i] == pytest.approx(eh, rel=1e-9)
        assert parts["mutual_information"][i] == pytest.approx(h - eh, abs=1e-9)
        votes = [members[k, i].argmax() == mix[i].argmax() for k in range(4)]
        assert parts["agreement"][i] == pytest.approx(np.mean(votes))
    same = label_uncertainty_parts(np.stack([members[0]] * 3))
    np.testing.assert_allclose(same["mutual_information"], 0, atol=1e-12)
    np.testing.assert_allclose(same["agreement"], 1)
    np.testing.assert_allclose(same["entropy"], same["expected_entropy"])


def test_confusion_table_counts_with_unknown_column():
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 3, 1, 2, 0, 3])  # 3 = unknown
    table = confusion_table(y, pred, ["a", "b", "c"])
    assert table.loc["a", "a"] == 1 and table.loc["a", "unknown"] == 1
    assert table.loc["c", "a"] == 1 and table.loc["c", "unknown"] == 1
    assert table.to_numpy().sum() == 6
    # against a loop on random codes, a type that no cell has included
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 200), rng.integers(0, 5, 200)  # type 3 never true
    table = confusion_table(y, pred, ["a", "b", "c", "d"])
    loop = np.zeros((4, 5), dtype=int)
    for t, q in zip(y, pred, strict=True):
        loop[t, q] += 1
    np.testing.assert_array_equal(table.to_numpy(), loop)


# -------------------------------------------------------------- parity
def test_one_member_copied_from_scanvae_gives_its_logits_and_loss():
    from scvi.module import SCANVAE

    torch.manual_seed(0)
    g, b, c = 30, 24, 4
    ref = SCANVAE(g, n_batch=2, n_labels=c, n_hidden=16, n_latent=5).eval()
    ours = EnsembleSCANVAE(
        g, n_labels=c, n_members=1, ensemble="deep", n_batch=2, n_hidden=16, n_latent=5
    ).eval()
    load_scanvi_member(ours, 0, ref)
    x = torch.poisson(torch.rand(b, g) * 5) + 1
    batch = torch.randint(0, 2, (b, 1))
    labels = torch.randint(0, c, (b, 1))
    t = {"X": x, "batch": batch, "labels": labels}
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x, batch)[0], ref.classify(x, batch))
        with ours.member(0):
            kwargs = {"labelled_tensors": t, "classification_ratio": 50.0}
            torch.manual_seed(3)
            _, _, theirs = ref(t, loss_kwargs=kwargs)
            torch.manual_seed(3)
            _, _, mine = ours(t, loss_kwargs=kwargs)
    assert float(mine.loss) == pytest.approx(float(theirs.loss), rel=1e-5)
    assert float(mine.classification_loss) == pytest.approx(float(theirs.classification_loss))
    torch.testing.assert_close(mine.kl_local["kl_local"], theirs.kl_local["kl_local"])


@pytest.fixture(scope="module")
def labelled():
    warnings.simplefilter("ignore")
    adata = ev.data.synthetic("lopez2020", seed=0, n_cells=460, n_genes=40)  # >= 40 held out
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    lab = truth.copy()
    lab[np.random.default_rng(0).random(adata.n_obs) < 0.3] = "Unknown"
    adata.obs["lab"] = lab
    return adata


def test_model_with_scanvi_weights_predicts_as_scanvi(labelled):
    adata = labelled.copy()
    scvi.model.SCANVI.setup_anndata(
        adata, labels_key="lab", unlabeled_category="Unknown", layer="counts"
    )
    scvi.settings.seed = 0
    theirs = scvi.model.SCANVI(adata, n_hidden=16, n_latent=3)
    theirs.train(max_epochs=2, enable_progress_bar=False)
    EnsembleSCANVI.setup_anndata(
        adata, labels_key="lab", unlabeled_category="Unknown", layer="counts"
    )
    ours = EnsembleSCANVI(adata, n_members=1, ensemble="deep", n_hidden=16, n_latent=3)
    load_scanvi_member(ours.module, 0, theirs.module.cpu())
    ours.is_trained_ = True
    assert ours.cell_types == list(theirs._label_mapping[: theirs.n_labels])
    p_theirs = theirs.predict(adata, soft=True)
    p_ours = ours.predict(soft=True)
    np.testing.assert_allclose(p_ours.to_numpy(), p_theirs.to_numpy(), atol=1e-5)
    assert (ours.predict() == theirs.predict(adata)).all()


# ---------------------------------------------------------- training, API
@pytest.fixture(scope="module")
def trained(labelled):
    adata = labelled.copy()
    EnsembleSCVI.setup_anndata(adata, layer="counts")
    vae = EnsembleSCVI(adata, n_members=2, ensemble="deep", n_hidden=16, n_latent=3, seed=0)
    vae.train(max_epochs=4, seed=0, enable_progress_bar=False)
    model = EnsembleSCANVI.from_ensemble_scvi(vae, "Unknown", labels_key="lab")
    model.train(max_epochs=3, seed=0, enable_progress_bar=False)
    return adata, vae, model


def test_from_ensemble_scvi_keeps_the_vae_weights_and_trains(trained):
    adata, vae, model = trained
    fresh = EnsembleSCANVI.from_ensemble_scvi(vae, "Unknown", labels_key="lab")
    vae_state = vae.module.state_dict()
    for name, value in fresh.module.state_dict().items():
        if name in vae_state:
            torch.testing.assert_close(value, vae_state[name])
    assert fresh.was_pretrained and model.is_trained
    assert "train_classification_loss" in model.history
    members = model.predict_members()
    assert members.shape == (2, adata.n_obs, model.n_labels)
    np.testing.assert_allclose(members.sum(-1), 1, atol=1e-5)
    soft = model.predict(soft=True)
    np.testing.assert_allclose(soft.to_numpy(), members.mean(0), atol=1e-6)
    assert list(soft.columns) == model.cell_types and "Unknown" not in model.cell_types
    # the members differ (independent classifiers), so their disagreement is not zero
    assert np.abs(members[0] - members[1]).max() > 1e-3


def test_save_load_round_trip(trained, tmp_path):
    adata, _, model = trained
    model.save(tmp_path / "m")
    loaded = EnsembleSCANVI.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.predict_members(), model.predict_members(), atol=1e-6)
    assert loaded.cell_types == model.cell_types


def test_label_uncertainty_rule_is_the_conformal_quantile_of_held_out_labelled(trained):
    adata, _, model = trained
    info = ev.tl.label_uncertainty(model, adata, alpha=0.1, score="entropy")
    held = np.intersect1d(model.validation_indices, model._labeled_indices)
    members = model.predict_members(indices=held)
    mix = members.mean(0)
    scores = np.sort([scipy_entropy(row) for row in mix])
    rank = int(np.ceil((len(scores) + 1) * 0.9))
    assert info["n_calibration"] == len(held) > 0
    assert info["threshold"] == pytest.approx(scores[min(rank, len(scores)) - 1], rel=1e-6)
    ent = adata.obs["ensemblevi_label_entropy"].to_numpy()
    np.testing.assert_array_equal(
        adata.obs["ensemblevi_label_unknown"].to_numpy(), ent > info["threshold"]
    )
    call = adata.obs["ensemblevi_label_call"].astype(str).to_numpy()
    label = adata.obs["ensemblevi_label"].astype(str).to_numpy()
    unknown = adata.obs["ensemblevi_label_unknown"].to_numpy()
    assert (call[unknown] == "unknown").all() and (call[~unknown] == label[~unknown]).all()
    assert 0 <= info["calibration_fpr"] <= 1
    probs = adata.obsm["ensemblevi_label_probabilities"]
    assert list(probs.columns) == model.cell_types
    # a threshold given is used as it is
    again = ev.tl.label_uncertainty(model, adata, threshold=0.0, key_added="t", score="entropy")
    assert again["n_unknown"] == int((adata.obs["t_label_entropy"] > 0).sum())


def test_label_calibration_and_plots(trained, tmp_path):
    adata, _, model = trained
    ev.tl.label_uncertainty(model, adata)
    hidden = adata.obs["lab"].astype(str).to_numpy() == "Unknown"
    out = ev.tl.label_calibration(adata, "cell_type", mask=hidden)
    s = out["summary"]
    assert s["n_cells"] == hidden.sum()
    pred = adata.obs["ensemblevi_label"].astype(str).to_numpy()[hidden]
    truth = adata.obs["cell_type"].astype(str).to_numpy()[hidden]
    assert s["accuracy"] == pytest.approx(np.mean(pred == truth))
    conf = out["confusion"].set_index("true")
    assert conf.to_numpy().sum() == hidden.sum()
    assert conf["unknown"].sum() == adata.obs["ensemblevi_label_unknown"].to_numpy()[hidden].sum()
    fig = ev.pl.label_calibration(adata, return_fig=True)
    assert len(fig.axes) == 2
    fig2 = ev.pl.label_confusion(adata, return_fig=True)
    assert fig2.axes[0].get_xlabel() == "predicted"
    ev.pl.label_calibration(adata, save=tmp_path / "rel.png", show=False)
    assert (tmp_path / "rel.png").stat().st_size > 0
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, 2)
    assert ev.pl.label_calibration(adata, ax=axes, show=False) == list(axes)
    with pytest.raises(ValueError, match=r"label_calibration\(.*first"):
        ev.pl.label_confusion(adata, key="nothing")


@pytest.mark.parametrize("kind", ["batch", "hyperbatch", "mcdropout", "single"])
def test_every_kind_trains_and_predicts(labelled, kind):
    adata = labelled[:200].copy()
    EnsembleSCANVI.setup_anndata(
        adata, labels_key="lab", unlabeled_category="Unknown", layer="counts"
    )
    model = EnsembleSCANVI(adata, n_members=3, ensemble=kind, n_hidden=16, n_latent=3, seed=0)
    model.train(max_epochs=2, seed=0, enable_progress_bar=False)
    members = model.predict_members()
    assert members.shape == ((1 if kind == "single" else 3), 200, model.n_labels)
    assert np.isfinite(members).all()


def test_query_mapping_keeps_the_classifier_frozen_unless_asked(trained):
    adata, vae, model = trained
    query = adata[:120].copy()
    query.obs["lab"] = "Unknown"
    for key in [k for k in query.obs if k.startswith("_scvi")]:
        del query.obs[key]
    ref_head = model.module.classifier_head.weight.detach().clone()
    mapped = EnsembleSCANVI.load_query_data(query.copy(), model)
    mapped.train(max_epochs=2, enable_progress_bar=False)
    torch.testing.assert_close(mapped.module.classifier_head.weight.cpu(), ref_head.cpu())
    assert mapped.predict_members().shape == (2, 120, model.n_labels)
    # no covariates: the reference's scVI ensemble passes on and decides for the query
    assert mapped.source_scvi is vae
    cells = mapped.adata.copy()
    info = ev.tl.label_uncertainty(mapped, cells, key_added="m")
    alone = query.copy()
    flags = ev.tl.cell_novelty(vae, alone, key_added="a", progress=False)["is_novel"]
    assert info["novelty_model"] == "EnsembleSCVI"
    np.testing.assert_array_equal(
        cells.obs["m_label_unknown"].to_numpy().astype(bool), flags.to_numpy().astype(bool)
    )
    free = EnsembleSCANVI.load_query_data(query.copy(), model, freeze_classifier=False)
    assert free.module.classifier_head.weight.requires_grad
    bad = query.copy()
    bad.obs["lab"] = "a new type"
    with pytest.raises(ValueError, match="does not know"):
        EnsembleSCANVI.load_query_data(bad, model)


def test_a_query_with_batches_gets_no_unmapped_source(labelled):
    adata = labelled.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2 == 0, "b0", "b1")
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    vae = EnsembleSCVI(adata, n_members=2, n_hidden=16, n_latent=3, seed=0)
    vae.train(max_epochs=1, seed=0, enable_progress_bar=False)
    model = EnsembleSCANVI.from_ensemble_scvi(vae, "Unknown", labels_key="lab")
    model.train(max_epochs=1, seed=0, enable_progress_bar=False)
    assert model.source_scvi is vae
    query = labelled[:80].copy()
    query.obs["lab"] = "Unknown"
    query.obs["batch"] = "a new batch"
    mapped = EnsembleSCANVI.load_query_data(query, model)
    # the reference's scVI ensemble has never seen this batch: it would need mapping too
    assert mapped.source_scvi is None


def test_bad_input_is_refused_before_training(labelled):
    adata = labelled.copy()
    with pytest.raises(ValueError, match="labels_key"):
        EnsembleSCANVI.setup_anndata(adata, layer="counts")
    one = adata.copy()
    one.obs["lab"] = np.where(one.obs["lab"] == "Unknown", "Unknown", "only")
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleSCANVI.setup_anndata(one, labels_key="lab", unlabeled_category="Unknown")
    nan = adata.copy()
    nan.obs["lab"] = nan.obs["lab"].astype(object)
    nan.obs.iloc[0, nan.obs.columns.get_loc("lab")] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        EnsembleSCANVI.setup_anndata(nan, labels_key="lab", unlabeled_category="Unknown")
    EnsembleSCANVI.setup_anndata(
        adata, labels_key="lab", unlabeled_category="Unknown", layer="counts"
    )
    with pytest.raises(ValueError, match="gene-label"):
        EnsembleSCANVI(adata, dispersion="gene-label")
    with pytest.raises(ValueError, match="AnnData"):
        EnsembleSCANVI(None)
    with pytest.raises(ValueError, match="score must be"):
        ev.tl.label_uncertainty(EnsembleSCANVI(adata, n_members=1), adata, score="bad")
    none = adata.copy()
    none.obs["lab2"] = np.where(np.arange(none.n_obs) < 2, ["x", "y"][0], "Unknown")
    none.obs.loc[none.obs_names[1], "lab2"] = "y"
    EnsembleSCANVI.setup_anndata(
        none, labels_key="lab2", unlabeled_category="Unknown", layer="counts"
    )
    model = EnsembleSCANVI(none, n_members=1)
    model._labeled_indices = np.array([], dtype=int)
    with pytest.raises(ValueError, match="nothing to learn"):
        model.train(max_epochs=1)


def test_label_uncertainty_without_a_validation_split_asks_for_calibration(labelled):
    adata = labelled[:150].copy()
    EnsembleSCANVI.setup_anndata(
        adata, labels_key="lab", unlabeled_category="Unknown", layer="counts"
    )
    model = EnsembleSCANVI(adata, n_members=2, n_hidden=16, n_latent=3)
    model.train(max_epochs=1, train_size=1.0, enable_progress_bar=False)
    with pytest.raises(ValueError, match="calibration="):
        ev.tl.label_uncertainty(model, adata, score="entropy")
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[:40] = True
    info = ev.tl.label_uncertainty(model, adata, calibration=mask, score="entropy")
    assert info["n_calibration"] == 40
    assert isinstance(adata.obs["ensemblevi_label"].dtype, pd.CategoricalDtype)


def test_fit_temperature_recovers_a_known_overconfidence():
    from ensemblevi.metrics import fit_temperature
    from ensemblevi.metrics._labels import apply_temperature

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(6000, 5)) * 1.5
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in true])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # T = 3 too sure
    t = fit_temperature(sharp, y)
    assert t == pytest.approx(3.0, rel=0.1)
    np.testing.assert_allclose(apply_temperature(sharp, 3.0), true, atol=1e-9)
    assert (apply_temperature(sharp, t).argmax(1) == sharp.argmax(1)).all()
    with pytest.raises(ValueError, match="> 0"):
        apply_temperature(sharp, 0.0)


def test_label_uncertainty_with_temperature_tempers_the_pooled_probabilities(trained):
    from ensemblevi.metrics import fit_temperature
    from ensemblevi.metrics._labels import apply_temperature

    adata, _, model = trained
    info = ev.tl.label_uncertainty(model, adata, temperature=True, key_added="ts")
    held = np.intersect1d(model.validation_indices, model._labeled_indices)
    codes = pd.Categorical(
        adata.obs["lab"].astype(str).to_numpy()[held], categories=model.cell_types
    ).codes
    t = fit_temperature(model.predict_members(indices=held).mean(0), codes)
    assert info["temperature"] == pytest.approx(t, rel=1e-6)
    expected = apply_temperature(model.predict_members().mean(0), t)
    np.testing.assert_allclose(adata.obsm["ts_label_probabilities"].to_numpy(), expected, atol=1e-5)
    fixed = ev.tl.label_uncertainty(model, adata, temperature=2.0, key_added="t2")
    assert fixed["temperature"] == 2.0


@pytest.mark.parametrize("score", ["novelty_combined", "novelty_knn"])
def test_distance_unknown_rule_is_cell_novelty_flag(trained, score):
    adata, _, model = trained
    query = adata[:150].copy()
    info = ev.tl.label_uncertainty(model, query, score=score, key_added="nk")
    nov = query.uns["nk"]["cell_novelty"]
    assert info["threshold"] == nov[f"{score}_threshold"]
    values = query.obs[f"nk_{score}"].to_numpy()
    tested = query.obs["nk_novelty_tested"].to_numpy().astype(bool)
    unknown = query.obs["nk_label_unknown"].to_numpy().astype(bool)
    np.testing.assert_array_equal(unknown, tested & (values > info["threshold"]))
    if score == "novelty_combined":  # the default: cell_novelty's own flag
        np.testing.assert_array_equal(unknown, query.obs["nk_is_novel"].to_numpy().astype(bool))


def test_unknown_decided_by_the_scvi_ensembles_novelty_rule(trained):
    adata, vae, model = trained
    query = adata[:150].copy()
    info = ev.tl.label_uncertainty(model, query, novelty_model=vae, key_added="nv")
    assert info["novelty_model"] == "EnsembleSCVI"
    unknown = query.obs["nv_label_unknown"].to_numpy().astype(bool)
    # exactly the scVI ensemble's own flag on the same cells, and not the scANVI's
    alone = adata[:150].copy()
    flags = ev.tl.cell_novelty(vae, alone, key_added="alone", progress=False)
    np.testing.assert_array_equal(unknown, flags["is_novel"].to_numpy().astype(bool))
    assert info["threshold"] == alone.uns["alone"]["cell_novelty"]["novelty_combined_threshold"]
    scanvi = adata[:150].copy()
    own = ev.tl.label_uncertainty(model, scanvi, key_added="own", novelty_model="scanvi")
    assert own["novelty_model"] == "scANVI"
    assert own["threshold"] != info["threshold"]
    # the label columns still come from the scANVI
    assert (query.obs["nv_label"] == scanvi.obs["own_label"]).all()
    # the default: the scVI ensemble the scANVI was made from (kept as source_scvi)
    assert model.source_scvi is vae
    default = adata[:150].copy()
    got = ev.tl.label_uncertainty(model, default, key_added="d")
    assert got["novelty_model"] == "EnsembleSCVI" and got["threshold"] == info["threshold"]
    np.testing.assert_array_equal(default.obs["d_label_unknown"].to_numpy().astype(bool), unknown)


def test_source_scvi_is_kept_only_on_its_own_anndata(trained):
    adata, vae, _ = trained
    other = adata.copy()
    EnsembleSCANVI.setup_anndata(
        other, labels_key="lab", unlabeled_category="Unknown", layer="counts"
    )
    made = EnsembleSCANVI.from_ensemble_scvi(vae, "Unknown", labels_key="lab", adata=other)
    # the scVI ensemble's rule reads its training cells in its own AnnData, not this one
    assert made.source_scvi is None
    scratch = EnsembleSCANVI(other, n_members=2, n_hidden=16, n_latent=3)
    assert scratch.source_scvi is None


def test_save_and_load_keep_the_source_scvi_and_its_rule(trained, tmp_path):
    adata, vae, model = trained
    model.save(tmp_path / "m", prefix="a_")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == [
        "a_model.json",
        "a_model.pt",
        "a_source_scvi_model.json",
        "a_source_scvi_model.pt",
    ]
    loaded = EnsembleSCANVI.load(tmp_path / "m", adata=adata, prefix="a_")
    assert isinstance(loaded.source_scvi, EnsembleSCVI) and loaded.source_scvi is not vae
    for name, value in vae.module.state_dict().items():
        torch.testing.assert_close(loaded.source_scvi.module.state_dict()[name], value)
    np.testing.assert_array_equal(loaded.source_scvi.train_indices, vae.train_indices)
    before, after = adata[:150].copy(), adata[:150].copy()
    a = ev.tl.label_uncertainty(model, before, key_added="b")
    b = ev.tl.label_uncertainty(loaded, after, key_added="b")
    assert a["threshold"] == b["threshold"] and b["novelty_model"] == "EnsembleSCVI"
    np.testing.assert_array_equal(
        before.obs["b_label_unknown"].to_numpy(), after.obs["b_label_unknown"].to_numpy()
    )
    # a refused save writes nothing, the source included
    for name in ("a_source_scvi_model.json", "a_source_scvi_model.pt"):
        (tmp_path / "m" / name).unlink()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m", prefix="a_")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["a_model.json", "a_model.pt"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "adata.h5ad").write_text("the user's")
    with pytest.raises(FileExistsError, match=r"adata\.h5ad already exists"):
        model.save(tmp_path / "d", save_anndata=True)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["adata.h5ad"]
    assert (tmp_path / "d" / "adata.h5ad").read_text() == "the user's"


def test_a_source_scvi_that_does_not_match_is_left_out_with_a_warning(trained, tmp_path):
    adata, _, model = trained
    model.save(tmp_path / "m")
    other = EnsembleSCVI(adata, n_members=2, ensemble="deep", n_hidden=16, n_latent=3, seed=1)
    other.train(max_epochs=1, seed=1, enable_progress_bar=False)
    other.save(tmp_path / "m", prefix="source_scvi_", overwrite=True)  # another ensemble
    with pytest.warns(UserWarning, match="not those saved with this model"):
        loaded = EnsembleSCANVI.load(tmp_path / "m", adata=adata)
    assert loaded.source_scvi is None
    (tmp_path / "m" / "source_scvi_model.pt").unlink()
    with pytest.warns(UserWarning, match="could not be read"):
        loaded = EnsembleSCANVI.load(tmp_path / "m", adata=adata)
    assert loaded.source_scvi is None
    query = adata[:60].copy()
    info = ev.tl.label_uncertainty(loaded, query, key_added="q")
    assert info["novelty_model"] == "scANVI"


def test_novelty_model_needs_a_distance_score_and_an_scvi_ensemble(trained):
    adata, vae, model = trained
    query = adata[:50].copy()
    with pytest.raises(ValueError, match="distance score"):
        ev.tl.label_uncertainty(model, query, score="entropy", novelty_model=vae)
    with pytest.raises(TypeError, match="EnsembleSCVI"):
        ev.tl.label_uncertainty(model, query, novelty_model=model)
    with pytest.raises(ValueError, match="'scanvi' or None"):
        ev.tl.label_uncertainty(model, query, novelty_model="scvi")
    with pytest.raises(ValueError, match="drop novelty_model"):
        ev.tl.label_uncertainty(model, query, score="entropy", novelty_model="scanvi")
