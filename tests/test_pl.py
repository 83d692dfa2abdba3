"""Figures: scanpy's ax / show / save / return_fig rules, stored thresholds, no global style."""

import json
import subprocess
import sys

import matplotlib

from ensemblevi.pl._spread import member_histograms, point_density
from ensemblevi.pl._utils import place_labels, save_figure
from ensemblevi.tl._embedding import UMAP_KEY

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import private_copy
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text

import ensemblevi as ev

MARKERS = {"Fibroblast": ["DCN", "GSN"], "Myeloid": ["CD14"]}
THRESHOLD = 0.25  # not the default 0.1: the figures must draw the stored value


@pytest.fixture(scope="module")
def analysed(heart_model):
    model = private_copy(heart_model)  # the session's (conftest.py); results go in its copy
    adata = model.adata
    ev.tl.uncertainty_analysis(
        model,
        adata,
        MARKERS,
        groupby="cell_type",
        n_samples=2,
        cv_threshold=THRESHOLD,
        alpha=0.05,
        embedding=True,
        progress=False,
    )
    ev.tl.group_novelty(model, adata, groupby="cell_type", min_cells=3, progress=False)
    ev.tl.cluster_stability(model, adata, n_top_markers=5)
    ev.tl.member_umaps(model, adata, members=3, n_epochs=30)
    return adata


def _de_table(n=40):
    rng = np.random.default_rng(0)
    lfc = rng.normal(0, 1.5, n)
    return pd.DataFrame(
        {
            "lfc_median": lfc,
            "lfc_q2.5": lfc - 0.5,
            "lfc_q97.5": lfc + 0.5,
            "proba_de": 1 / (1 + np.exp(-3 * (np.abs(lfc) - 1))),
            "is_de_fdr_0.05": np.abs(lfc) > 2,
            "call_flips": np.arange(n) % 7 == 0,
            "lfc_member_std": rng.gamma(2, 0.1, n),
        },
        index=[f"g{i}" for i in range(n)],
    )


def _calibration():
    rng = np.random.default_rng(0)
    pit = rng.random(2000)
    return {"a": {"pit": pit, "coverage": ev.metrics.interval_coverage(pit)}}


# (name, call with adata -> plot kwargs -> result, number of panels)
PLOTS = {
    "model_spread": (lambda a, **kw: ev.pl.model_spread(a, **kw), 3),
    "biological_spread": (lambda a, **kw: ev.pl.biological_spread(a, **kw), 3),
    "member_histograms": (lambda a, **kw: member_histograms(a, **kw), 3),
    "gene_uncertainty": (lambda a, **kw: ev.pl.gene_uncertainty(a, highlight=["DCN"], **kw), 1),
    "novelty_umap": (lambda a, **kw: ev.pl.novelty_umap(a, color="cell_type", **kw), 6),
    "group_novelty": (lambda a, **kw: ev.pl.group_novelty(a, **kw), 1),
    "cluster_stability": (lambda a, **kw: ev.pl.cluster_stability(a, **kw), 1),
    "stability_umap": (lambda a, **kw: ev.pl.stability_umap(a, **kw), 3),
    "member_embeddings": (lambda a, **kw: ev.pl.member_embeddings(a, **kw), 3),
    "calibration": (lambda a, **kw: ev.pl.calibration(_calibration(), **kw), 2),
    "de_volcano": (lambda a, **kw: ev.pl.de_volcano(_de_table(), **kw), 2),
}


def _drawn(axis: Axes) -> int:
    return len(axis.collections) + len(axis.lines) + len(axis.patches)


def test_import_changes_no_matplotlib_setting():
    code = (
        "import json, matplotlib\n"
        "before = {k: repr(v) for k, v in matplotlib.rcParams.items()}\n"
        "import ensemblevi, ensemblevi.pl\n"
        "after = {k: repr(v) for k, v in matplotlib.rcParams.items()}\n"
        "print(json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]}))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("name", list(PLOTS))
def test_each_plot_draws_into_the_given_axes(analysed, name):
    plot, n = PLOTS[name]
    fig, axes = plt.subplots(1, n + 1, figsize=(3 * (n + 1), 3))
    size = int(plt.rcParams["font.size"])
    out = plot(analysed, ax=axes[:n] if n > 1 else axes[0], show=False)
    expected = list(axes[:n]) if n > 1 else axes[0]
    assert out == expected  # the given axes come back, no new figure
    assert all(_drawn(axis) > 0 for axis in axes[:n]) and _drawn(axes[n]) == 0
    assert plt.rcParams["font.size"] == size  # the style does not leak out
    with pytest.raises(ValueError, match="axes were given"):
        plot(analysed, ax=[axes[0]] * (n - 1) or [], show=False)
    plt.close(fig)
    grid = plt.subplots(2, 3)[1]  # an array of axes, as plt.subplots returns
    if n > 1:
        assert plot(analysed, ax=grid, show=False) == list(grid.flat)[:n]
    plt.close("all")


@pytest.mark.parametrize("name", list(PLOTS))
def test_return_fig_and_save(analysed, name, tmp_path):
    plot, n = PLOTS[name]
    fig = plot(analysed, return_fig=True)
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.has_data()]) >= n
    plt.close(fig)
    axes = plot(analysed, show=False)
    assert (isinstance(axes, Axes) and n == 1) or (len(axes) == n and n > 1)
    target = tmp_path / "sub" / f"{name}.png"
    plot(analysed, show=False, save=target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file
    plt.close("all")


@pytest.fixture
def scanpy_settings():
    """scanpy's settings, put back after the test (monkeypatch cannot: class properties)."""
    import scanpy as sc

    old = sc.settings.figdir, sc.settings.file_format_figs, sc.settings.autoshow
    yield sc.settings
    sc.settings.figdir, sc.settings.file_format_figs, sc.settings.autoshow = old


def test_save_as_scanpy_true_a_suffix_under_figdir_or_a_path(analysed, tmp_path, scanpy_settings):
    scanpy_settings.figdir = tmp_path
    scanpy_settings.file_format_figs = "png"
    member_histograms(analysed, show=False, save=True)
    member_histograms(analysed, show=False, save="_heart.svg")  # the suffix names the format
    member_histograms(analysed, show=False, save="_plain")  # no format: figdir's default
    member_histograms(analysed, show=False, save=tmp_path / "elsewhere" / "h")  # a Path: itself
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "elsewhere/h.png",
        "member_histograms.png",
        "member_histograms_heart.svg",
        "member_histograms_plain.png",
    ]
    with pytest.raises(TypeError, match="suffix"):
        member_histograms(analysed, show=False, save=3)
    plt.close("all")


def test_show_none_follows_scanpys_autoshow(analysed, monkeypatch, scanpy_settings):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    scanpy_settings.autoshow = True
    assert ev.pl.gene_uncertainty(analysed) is None and shown == [1]
    assert isinstance(ev.pl.gene_uncertainty(analysed, return_fig=True), Figure) and shown == [1]
    scanpy_settings.autoshow = False
    assert isinstance(ev.pl.gene_uncertainty(analysed), Axes) and shown == [1]
    assert ev.pl.gene_uncertainty(analysed, show=True) is None and shown == [1, 1]
    plt.close("all")


def test_plots_before_their_tool_name_the_tool_to_run():
    adata = ev.data.synthetic("lopez2020", n_cells=30, n_genes=8)
    calls = [
        ("expression_spread", lambda: ev.pl.model_spread(adata, show=False)),
        ("expression_spread", lambda: ev.pl.biological_spread(adata, show=False)),
        ("gene_uncertainty", lambda: ev.pl.gene_uncertainty(adata, show=False)),
        ("group_novelty", lambda: ev.pl.group_novelty(adata, show=False)),
        ("cell_novelty", lambda: ev.pl.novelty_umap(adata, basis="X_pca", show=False)),
        ("expression_umap", lambda: ev.pl.novelty_umap(adata, show=False)),
        ("cluster_stability", lambda: ev.pl.cluster_stability(adata, show=False)),
        ("cluster_stability", lambda: ev.pl.stability_umap(adata, show=False)),
        ("member_umaps", lambda: ev.pl.member_embeddings(adata, show=False)),
        ("label_calibration", lambda: ev.pl.label_calibration(adata, show=False)),
        ("label_calibration", lambda: ev.pl.label_confusion(adata, show=False)),
        ("differential_expression", lambda: ev.pl.de_volcano(adata, show=False)),
    ]
    adata.obsm["X_pca"] = np.zeros((adata.n_obs, 2))
    for tool, call in calls:
        with pytest.raises(ValueError, match=rf"ev\.tl\.{tool}\(.*first") as err:
            call()
        assert "first" in str(err.value), (tool, str(err.value))
    with pytest.raises(ValueError, match="hyperbatch"):
        ev.pl.hyperparameter_trajectories(object(), show=False)
    plt.close("all")


def test_thresholds_drawn_are_the_stored_ones(analysed):
    stored = analysed.uns["ensemblevi"]["expression_spread"]["params"]["cv_threshold"]
    assert stored == THRESHOLD
    for axis in ev.pl.model_spread(analysed, show=False):
        (line,) = [ln for ln in axis.lines if ln.get_linestyle() == "--"]
        # the dashed line is std = threshold x mean: through (0, 0) and (1, threshold)
        assert line.get_slope() == pytest.approx(THRESHOLD)
        np.testing.assert_array_equal(line.get_xydata()[0], [0, 0])
    for axis in member_histograms(analysed, show=False):
        (line,) = axis.lines
        np.testing.assert_allclose(line.get_xdata(), [THRESHOLD, THRESHOLD])
    plt.close("all")


def test_model_spread_reads_the_stored_points(analysed):
    cells = analysed.uns["ensemblevi"]["expression_spread"]["cells"]
    axes = ev.pl.model_spread(analysed, genes=["CD14"], show=False)
    sel = cells[cells["gene"] == "CD14"]
    points = axes.collections[0].get_offsets()
    assert len(points) == len(sel)
    np.testing.assert_allclose(np.sort(points[:, 0]), np.sort(sel["mean"]))
    density = point_density(sel["mean"].to_numpy(), sel["std"].to_numpy())
    np.testing.assert_allclose(np.sort(axes.collections[0].get_array()), np.sort(density))
    plt.close("all")


def test_point_density_is_scotts_gaussian_kernel_density():
    rng = np.random.default_rng(1)
    x, y = rng.gamma(2, 1, 300), rng.normal(0, 1, 300)
    # independent reference, a slow loop in float64: the Gaussian kernel with Scott's
    # bandwidth (covariance x n^(-2/(d+4)), d = 2), up to a constant that the max removes
    inv = np.linalg.inv(np.cov(np.vstack([x, y])) * len(x) ** (-1 / 3))
    ref = np.zeros(len(x))
    for i in range(len(x)):
        for j in range(len(x)):
            d = np.array([x[i] - x[j], y[i] - y[j]])
            ref[i] += np.exp(-0.5 * d @ inv @ d)
    np.testing.assert_allclose(point_density(x, y), ref / ref.max(), rtol=1e-8)
    # more points than the kernel is fitted on: the same answer on every call, in (0, 1]
    many = rng.normal(size=(2, 5000))
    first = point_density(*many, max_points=500)
    np.testing.assert_array_equal(first, point_density(*many, max_points=500))
    assert first.max() == 1.0 and first.min() > 0
    assert (point_density([1.0, 2.0], [3.0, 4.0]) == 1).all()  # too few points: flat
    assert (point_density(np.arange(5.0), np.arange(5.0)) == 1).all()  # on a line: flat


def test_novelty_umap_reads_the_stored_embedding(analysed):
    axes = ev.pl.novelty_umap(analysed, show=False)
    assert [a.get_title() for a in axes] == [
        "novelty_combined",
        "novelty_knn",
        "novelty_fit",
        "novelty_cv",
        "novelty_llgap",
    ]
    xy = np.sort(axes[0].collections[0].get_offsets(), axis=0)
    np.testing.assert_allclose(xy, np.sort(analysed.obsm[UMAP_KEY], axis=0), rtol=1e-6)
    del_key = analysed.obsm.pop(UMAP_KEY)
    try:
        with pytest.raises(ValueError, match="embedding=True"):
            ev.pl.novelty_umap(analysed, show=False)
    finally:
        analysed.obsm[UMAP_KEY] = del_key
    plt.close("all")


def test_group_novelty_bars_are_the_stored_values(analysed):
    ax = ev.pl.group_novelty(analysed, show=False)
    table = pd.DataFrame(analysed.uns["ensemblevi"]["group_novelty"]["table"])
    bars = {
        t.get_text(): p.get_x() + p.get_width()
        for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)
    }
    for _, row in table.iterrows():  # the majority test: the share of cells flagged
        expected = 0.0 if pd.isna(row["share_flagged"]) else row["share_flagged"]
        assert bars[row["group"]] == pytest.approx(expected)
    plt.close("all")
    with pytest.raises(ValueError, match=r"ev\.tl\.group_novelty\(.*first"):
        ev.pl.group_novelty(ev.data.synthetic("lopez2020", n_cells=50, n_genes=10), show=False)


def test_cluster_stability_bars_are_the_stored_values_and_threshold(analysed):
    ax = ev.pl.cluster_stability(analysed, show=False)
    stored = analysed.uns["ensemblevi"]["cluster_stability"]
    table = pd.DataFrame(stored["table"])
    np.testing.assert_allclose([p.get_height() for p in ax.patches], table["stability"])
    assert ax.lines[0].get_ydata()[0] == stored["params"]["threshold"]
    plt.close("all")


def test_member_embeddings_align_for_display_only(analysed):
    from ensemblevi.pl._stability import _aligned

    rng = np.random.default_rng(0)
    target = rng.normal(size=(50, 2))
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    source = 3.0 * target @ rot + np.array([5.0, -2.0])
    np.testing.assert_allclose(_aligned(target, source), target, atol=1e-10)
    before = analysed.obsm["X_umap_member_1"].copy()
    axes = ev.pl.member_embeddings(analysed, show=False)
    assert [a.get_title() for a in axes] == ["member 0", "member 1", "member 2"]
    np.testing.assert_array_equal(analysed.obsm["X_umap_member_1"], before)  # not changed
    plt.close("all")


def test_save_figure_is_atomic(analysed, tmp_path, monkeypatch):
    fig = ev.pl.gene_uncertainty(analysed, return_fig=True)
    (path,) = save_figure(fig, tmp_path / "g")
    before = path.read_bytes()

    def broken(target, **kwargs):
        with open(target, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, tmp_path / "g")
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
    plt.close("all")


def test_placed_labels_never_overlap_on_a_crowded_plot(tmp_path):
    rng = np.random.default_rng(0)
    # 40 names on points in two tight clumps and a few spread out: where labels pile up
    x = np.concatenate([rng.normal(1, 0.02, 18), rng.normal(1.2, 0.02, 18), rng.random(4) * 2])
    y = np.concatenate([rng.normal(1, 0.02, 18), rng.normal(1.1, 0.02, 18), rng.random(4) * 2])
    names = [f"GENE{i}{'X' * (i % 4)}" for i in range(len(x))]
    fig, axis = plt.subplots(figsize=(4.6, 3.6), layout="constrained")
    axis.scatter(x, y, s=5)
    labels = place_labels(axis, x, y, names, fontsize=6.5)
    fig.savefig(tmp_path / "crowded.png")  # the final draw: positions after layout
    renderer = fig.canvas.get_renderer()
    # the text's own box (an Annotation's extent includes its leader line)
    boxes = [Text.get_window_extent(a, renderer) for a in labels]
    assert [a.get_text() for a in labels] == names
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (names[i], names[j])
    # and no name covers a named point
    points = axis.transData.transform(np.column_stack([x, y]))
    for box in boxes:
        assert not any(box.contains(px, py) for px, py in points)
    # the example is crowded: names put beside their points, unplaced, overlap
    naive = [axis.annotate(n, (a, b), fontsize=6.5) for n, a, b in zip(names, x, y, strict=True)]
    fig.canvas.draw()
    naive_boxes = [t.get_window_extent(renderer) for t in naive]
    assert sum(naive_boxes[0].overlaps(b) for b in naive_boxes[1:]) > 3
    # deterministic: the same layout again
    _, axis2 = plt.subplots(figsize=(4.6, 3.6), layout="constrained")
    axis2.scatter(x, y, s=5)
    again = place_labels(axis2, x, y, names, fontsize=6.5)
    assert [a.xyann for a in again] == [a.xyann for a in labels]
    plt.close("all")
