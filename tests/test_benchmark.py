"""The benchmark suite: scoring against slow references, the docs section, a quick run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ensemblevi.benchmark._fdr import summarise
from ensemblevi.benchmark._markdown import update_docs
from ensemblevi.benchmark._scoring import MethodResult, fdr_curve, score_method, tpr, true_fdr


def _bayes_calls_loop(p, target):
    """Largest k whose top-k mean (1 - p) is <= target, by brute force."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    best = 0
    for k in range(1, len(p) + 1):
        if np.mean([1 - p[i] for i in order[:k]]) <= target:
            best = k
    calls = np.zeros(len(p), bool)
    calls[order[:best]] = True
    return calls


def _auroc_loop(truth, score):
    pos, neg = score[truth], score[~truth]
    wins = [(a > b) + 0.5 * (a == b) for a in pos for b in neg]
    return float(np.mean(wins))


def _average_precision_loop(truth, score):
    order = np.argsort(-score)
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if truth[i]:
            hits += 1
            total += hits / rank
    return total / truth.sum()


@pytest.mark.parametrize("seed", range(5))
def test_bayes_scores_match_slow_loops(seed):
    rng = np.random.default_rng(seed)
    g = 80
    truth = rng.random(g) < 0.4
    p = np.clip(rng.beta(2, 2, g) + 0.4 * truth, 0, 1)  # no ties
    res = MethodResult("bayes", p)
    got = score_method(res, truth)
    for t in (0.05, 0.1, 0.2):
        calls = _bayes_calls_loop(p, t)
        n = calls.sum()
        fdr = (calls & ~truth).sum() / n if n else 0.0
        assert got[f"fdr@{t:g}"] == pytest.approx(fdr)
        assert got[f"tpr@{t:g}"] == pytest.approx((calls & truth).sum() / truth.sum())
        assert got[f"calls@{t:g}"] == n
    assert got["auroc"] == pytest.approx(_auroc_loop(truth, p))
    assert got["auprc"] == pytest.approx(_average_precision_loop(truth, p))
    curve = fdr_curve(res, truth)
    assert (curve["expected_fdr"] <= curve["target"] + 1e-12).all()
    manual_l1 = np.mean(
        [
            abs(np.mean(1 - p[c]) - true_fdr(c, truth)) if c.any() else 0.0
            for c in (_bayes_calls_loop(p, t) for t in curve["target"])
        ]
    )
    assert got["fdr_l1"] == pytest.approx(manual_l1)


def test_bh_scores_with_and_without_the_lfc_filter():
    rng = np.random.default_rng(3)
    g = 60
    truth = rng.random(g) < 0.5
    padj = np.where(truth, rng.uniform(0, 0.08, g), rng.uniform(0, 1, g))
    mask = rng.random(g) < 0.7
    plain, filtered = MethodResult("bh", padj), MethodResult("bh", padj, mask=mask)
    for t in (0.05, 0.2):
        calls, expected = plain.calls(t)
        np.testing.assert_array_equal(calls, padj <= t)
        assert expected == t
        calls_f, _ = filtered.calls(t)
        np.testing.assert_array_equal(calls_f, (padj <= t) & mask)
        assert true_fdr(calls_f, truth) == pytest.approx(
            (calls_f & ~truth).sum() / max(calls_f.sum(), 1)
        )
    # every masked-out gene ranks below every kept gene
    s = filtered.score
    assert s[~mask].max() < s[mask].min()
    assert score_method(plain, truth)["auroc"] == pytest.approx(_auroc_loop(truth, -np.log10(padj)))


def test_empty_calls_and_no_de_genes():
    truth = np.array([True, False, False])
    assert true_fdr(np.zeros(3, bool), truth) == 0.0
    assert np.isnan(tpr(np.ones(3, bool), np.zeros(3, bool)))
    calls, expected = MethodResult("bayes", np.array([0.1, 0.2, 0.3])).calls(0.05)
    assert not calls.any() and expected == 0.0


def test_summary_is_mean_and_sd_over_repetitions():
    recs = [
        {"preset": "x", "rep": r, "metrics": {"a": {"auroc": v, "auprc": 2 * v}}}
        for r, v in enumerate([0.6, 0.8, 0.7])
    ]
    s = summarise(recs).set_index("method")
    assert s.loc["a", "auroc"] == pytest.approx(0.7)
    assert s.loc["a", "auroc_sd"] == pytest.approx(np.std([0.6, 0.8, 0.7], ddof=1))
    assert s.loc["a", "auprc"] == pytest.approx(1.4)
    assert s.loc["a", "n_reps"] == 3


def test_update_docs_replaces_only_its_section(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\nhand-written part\n")
    update_docs(doc, "fdr", "first")
    update_docs(doc, "ood", "other")
    update_docs(doc, "fdr", "second")
    text = doc.read_text()
    assert "hand-written part" in text and "other" in text and "second" in text
    assert "first" not in text
    assert text.count("<!-- suite:fdr -->") == 1


def test_update_docs_points_figures_at_the_figures_folder(tmp_path):
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "benchmarks").mkdir()
    section = "## Suite\n\n![fdr](figures/de_fdr.png)\n"
    below = tmp_path / "docs" / "benchmarks" / "suite.md"
    update_docs(below, "fdr", section)
    assert "](../figures/de_fdr.png)" in below.read_text()
    beside = tmp_path / "docs" / "bench.md"  # the figures folder beside the page
    update_docs(beside, "fdr", section)
    assert "](figures/de_fdr.png)" in beside.read_text()
    alone = tmp_path / "elsewhere.md"  # no figures folder near: left as written
    update_docs(alone, "fdr", section)
    assert "](figures/de_fdr.png)" in alone.read_text()


def test_quick_suite_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from ensemblevi.cli import app

    doc = tmp_path / "bench.md"
    doc.write_text("# kept\n")
    args = ["benchmark", "--quick", "--out", str(tmp_path / "b"), "--docs", str(doc)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "b"
    for name in ("fdr", "calibration", "ood"):
        assert (out / f"{name}.md").exists() and (out / f"{name}.csv").exists()
        assert f"<!-- suite:{name} -->" in doc.read_text()
    assert (out / "figures" / "de_fdr.png").exists()
    assert doc.read_text().startswith("# kept")
    fdr = pd.read_csv(out / "fdr.csv")
    methods = set(fdr["method"])
    assert {"deep K=1", "deep K=2", "scvi-tools change (K=1)", "Wilcoxon + BH"} <= methods
    assert (
        fdr[["auroc", "auprc", "fdr@0.05", "tpr@0.2"]].apply(lambda c: c.between(0, 1)).all().all()
    )
    rec = json.loads((out / "fdr" / "lopez2020_rep0.json").read_text())
    assert len(rec["truth"]) == rec["n_genes"] == 40
    # a rerun reuses every saved unit instead of training again
    again = CliRunner().invoke(app, [*args, "--suite", "fdr"])
    assert again.exit_code == 0 and "reusing" in again.output
    # --no-train reports what is saved and leaves out what is not
    saved = CliRunner().invoke(app, [*args, "--suite", "fdr", "--reps", "2", "--no-train"])
    assert saved.exit_code == 0 and "not run yet, left out" in saved.output
    assert not (out / "fdr" / "lopez2020_rep1.json").exists()
    assert "Rebuilt from the saved results" in (out / "fdr.md").read_text()
    bad = CliRunner().invoke(app, ["benchmark", "--suite", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "Unknown suite" in bad.output


def test_cli_fdr_datasets_option(tmp_path):
    from typer.testing import CliRunner

    from ensemblevi.cli import app

    out = tmp_path / "b"
    base = ["benchmark", "--suite", "fdr", "--quick", "--out", str(out)]
    bad = CliRunner().invoke(app, [*base, "--datasets", "lopez2020,nope"])
    assert bad.exit_code == 2 and "Unknown FDR data set" in bad.output
    # the real-count data sets without --pbmc: skipped with the reason, nothing trained
    res = CliRunner().invoke(app, [*base, "--datasets", "pbmc_thinning,pbmc_null"])
    assert res.exit_code == 0, res.output
    assert "skipped (no pbmc3k.h5ad" in res.output and "no results to report" in res.output
    assert not any((out / "fdr").iterdir())
