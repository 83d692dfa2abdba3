"""benchmarks/de_diagnosis.py's pure functions against slow loops and closed forms."""

from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "de_diagnosis.py"


@pytest.fixture(scope="module")
def dd():
    spec = importlib.util.spec_from_file_location("de_diagnosis", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rates(rng, n=9, g=5):
    return rng.lognormal(0.0, 1.5, size=(n, g))


def test_normalise_loop(dd):
    rng = np.random.default_rng(0)
    r = _rates(rng)
    got = dd.normalise(r, library=1e4)
    for i in range(r.shape[0]):
        tot = math.fsum(r[i])
        for j in range(r.shape[1]):
            assert got[i, j] == pytest.approx(r[i, j] / tot * 1e4, rel=1e-12)


@pytest.mark.parametrize("c", [0.0, 0.1])
def test_group_median_lfc_loop(dd, c):
    rng = np.random.default_rng(1)
    r1, r2 = _rates(rng, 7), _rates(rng, 10)  # odd and even group sizes
    got = dd.group_median_lfc(r1, r2, c)
    for j in range(r1.shape[1]):
        m1 = statistics.median(math.log2(float(x) + c) for x in r1[:, j])
        m2 = statistics.median(math.log2(float(x) + c) for x in r2[:, j])
        assert got[j] == pytest.approx(m1 - m2, abs=1e-12)


def test_pair_median_lfc_loop(dd):
    rng = np.random.default_rng(2)
    r = _rates(rng, 20)
    in1 = np.arange(20) % 3 == 0
    in2 = ~in1
    got = dd.pair_median_lfc(r, in1, in2, 51, np.random.default_rng(5), 0.1)
    # the same draws, taken by hand
    draw = np.random.default_rng(5)
    i1 = draw.choice(np.flatnonzero(in1), size=51)
    i2 = draw.choice(np.flatnonzero(in2), size=51)
    for j in range(r.shape[1]):
        diffs = [
            math.log2(r[a, j] + 0.1) - math.log2(r[b, j] + 0.1) for a, b in zip(i1, i2, strict=True)
        ]
        assert got[j] == pytest.approx(statistics.median(diffs), abs=1e-12)


def test_truth_variants_reproduce_simulator(dd):
    """The recomputed pair truth is the simulator's own column (an independent code path);
    the oracle is the group-median loop on rates normalised by hand."""
    from ensemblevi import data

    adata = data.synthetic("hard", seed=3, n_cells=90, n_genes=12)
    cells = (
        np.flatnonzero(adata.obs["cell_type"] == "B")[:15],
        np.flatnonzero(adata.obs["cell_type"] == "A")[:20],
    )
    v = dd.truth_variants(adata, 3, cells)
    sim = adata.var["median_lfc_B_vs_A"].to_numpy(np.float64)
    np.testing.assert_allclose(v["pairs, absolute h (recomputed)"], sim, atol=1e-5)
    h = np.asarray(adata.layers["true_rate"], dtype=np.float64)
    for j in range(adata.n_vars):

        def side(c, j=j):
            return statistics.median(math.log2(h[i, j] / math.fsum(h[i]) * 1e4 + 0.1) for i in c)

        assert v["oracle (model's cells)"][j] == pytest.approx(
            side(cells[0]) - side(cells[1]), abs=1e-9
        )
    assert "oracle, observed batch (model's cells)" in v  # hard has 3 batches


def test_interval_coverage_loop_and_closed_form(dd):
    rng = np.random.default_rng(4)
    draws = rng.normal(size=(3, 41, 6))
    target = rng.normal(scale=2.0, size=6)
    got = dd.interval_coverage(draws, target, 0.95)
    for k in range(3):
        for j in range(6):
            q = statistics.quantiles(draws[k, :, j].tolist(), n=40, method="inclusive")
            assert got[k, j] == (q[0] <= target[j] <= q[-1])
    # closed form: N(0, 1) draws, the 95% interval is +-1.96
    big = rng.normal(size=(20000, 4))
    cov = dd.interval_coverage(big, np.array([0.0, 1.9, 2.05, -2.1]))
    assert cov.tolist() == [True, True, False, False]


def test_decompose_loop(dd):
    rng = np.random.default_rng(6)
    g = 300
    oracle = rng.normal(scale=0.5, size=g)
    model = oracle + rng.normal(scale=0.2, size=g)
    sim = np.abs(oracle + rng.normal(scale=0.2, size=g)) >= 0.5
    proba = rng.uniform(size=g)
    called = proba > 0.6
    got = dd.decompose(called, proba, model, sim, oracle, 0.5)
    count = dict.fromkeys(("false", "truth", "bias", "width", "sim_only", "or_false"), 0)
    for i in range(g):
        if not called[i]:
            continue
        o_de, big = abs(oracle[i]) >= 0.5, abs(model[i]) >= 0.5
        count["or_false"] += not o_de
        if sim[i]:
            count["sim_only"] += not o_de
            continue
        count["false"] += 1
        count["truth" if o_de else "bias" if big else "width"] += 1
    for k in ("false", "truth", "bias", "width", "sim_only"):
        assert got[k] == count[k]
    n = int(called.sum())
    assert got["fdr_sim"] == pytest.approx(count["false"] / n)
    assert got["fdr_oracle"] == pytest.approx(count["or_false"] / n)
    assert got["expected_fdr"] == pytest.approx(math.fsum(1 - p for p in proba[called]) / n)


def test_bias_rows_loop(dd):
    rng = np.random.default_rng(7)
    oracle = rng.uniform(-1, 1, size=400)
    model = oracle + rng.normal(0.05, 0.1, size=400)
    called = rng.uniform(size=400) < 0.3
    rows = dd.bias_rows(model, oracle, called, 0.5)
    for row, (_, lo, hi) in zip(rows, dd.BINS, strict=True):
        idx = [i for i in range(400) if lo <= abs(oracle[i]) < hi]
        err = [model[i] - oracle[i] for i in idx]
        assert row["n"] == len(idx)
        assert row["mean"] == pytest.approx(statistics.fmean(err))
        assert row["sd"] == pytest.approx(statistics.stdev(err))
        out = [math.copysign(1, oracle[i]) * (model[i] - oracle[i]) for i in idx]
        assert row["outward"] == pytest.approx(statistics.fmean(out))
        assert row["crosses"] == pytest.approx(sum(abs(model[i]) >= 0.5 for i in idx) / len(idx))
        assert row["called"] == pytest.approx(sum(bool(called[i]) for i in idx) / len(idx))


def test_analyse_and_report_without_a_model(dd):
    """Draws centred on the oracle: the calls' FDR under the oracle's truth is near the target, the
    false calls split exactly into the three causes, and the report renders every part."""
    from ensemblevi import data

    adata = data.synthetic("hard", seed=1, n_cells=90, n_genes=30)
    ct = adata.obs["cell_type"].to_numpy()
    cells = (np.flatnonzero(ct == "B"), np.flatnonzero(ct == "A"))
    variants = dd.truth_variants(adata, 1, cells)
    oracle = variants[dd.ORACLE]
    draws = oracle + np.random.default_rng(0).normal(scale=0.02, size=(2, 40, 30))
    rec = dd.analyse(draws, adata, variants, 0.5, dd.ORACLE)
    for t, d in rec["decomposition"].items():
        assert d["truth"] + d["bias"] + d["width"] == d["false"]
        assert d["fdr_oracle"] <= float(t) + 0.05
    md = dd.report([{"dataset": "x", "rep": 0, "models": {"m": rec}}], "cmd", {})
    for part in ("### 1.", "### 3.", "### 4.", "### 5.", "### Reading"):
        assert part in md
