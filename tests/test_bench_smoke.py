"""Every committed benchmark script still runs: each once, with tiny settings.

A script runs in this process (``runpy``, as ``__main__``, with its ``sys.argv``) in a
temporary folder, so the imports are paid once for the file. The numbers are meaningless;
what fails is a script that no longer runs (a renamed function, a changed signature, an
option passed to the wrong model). :data:`SMOKE` holds each script's tiny arguments; a
script without them is listed in :data:`NO_SMOKE_YET` with the reason, and
:func:`test_every_script_is_listed` makes sure a new script gets one of the two.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# ../shared/data beside the clone, as tests/conftest.py finds it
DATA = Path(os.environ.get("ENSEMBLEVI_DATA", ROOT.parent / "shared" / "data"))

#: script -> tiny arguments (``{pbmc}``: the PBMC 3k file; the test skips without it)
SMOKE: dict[str, list[str]] = {
    "check_figures.py": ["--cells", "500", "--members", "2", "--epochs", "1", "--out", "figs"],
    "bench_gene_order.py": ["--cells", "200", "--genes", "30", "--repeats", "2"],
    "bench_ensemble_speed.py": [
        "--epochs",
        "1",
        "--cells",
        "300",
        "--only",
        "scvi",
        "single",
        "--seq",
        "0",
    ],
    "bench_fingerprint.py": ["--cells", "200", "--genes", "300"],
    "bench_novelty_candidates.py": [
        "--seeds",
        "10",
        "--epochs",
        "1",
        "--kinds",
        "single",
        "--out",
        "cand.json",
        "--dump",
        "dump",
    ],
    "de_sample_fdr.py": ["--reps", "1"],
    "bench_likelihood.py": [
        "--k",
        "1",
        "2",
        "--batch",
        "8",
        "--genes",
        "20",
        "--steps",
        "1",
        "--repeats",
        "1",
    ],
    "bench_stability_scale.py": ["--members", "2", "--cells", "300", "--dim", "3"],
    "bench_simulator.py": ["--cells", "100", "--repeats", "1"],
    "bench_stability_cost.py": [
        "--data",
        "{pbmc}",
        "--n-seeds",
        "1",
        "--epochs",
        "1",
        "--kinds",
        "deep",
    ],
    "probe_analysis_allocations.py": [
        "chunks",
        "--cells",
        "100",
        "--members",
        "2",
        "--budgets",
        "2e7",
        "6e6",
    ],
    "probe_analysis_memory.py": ["2", "novelty", "--cells", "500", "--members", "2"],
    "profile_analysis.py": ["--cells", "500", "--members", "2", "--n-samples", "2"],
    "profile_step.py": ["scvi", "single", "--cells", "300", "--steps", "2"],
    "profile_uncertainty.py": [
        "--cells",
        "64",
        "--genes",
        "300",
        "--members",
        "2",
        "--n-samples",
        "1",
        "--chunk",
        "32",
    ],
}

#: scripts without tiny settings yet, with the reason (each is a candidate for a size switch)
_LONG = "no size switch yet: trains real-size models on real data for minutes"
_OTHERS = "owned by the DE / new-sample work (not changed by the smoke work); no size switch yet"
NO_SMOKE_YET: dict[str, str] = {
    # its --save / --load halves run in their own test (below): together they train and
    # analyse as the plain run does
    "bench_analysis_scale.py": "run by test_analysis_scale_saves_then_analyses_in_a_process...",
    "bench_atlas.py": "two fresh worker processes by design (clean peak-memory figures)",
    "bench_compile_time.py": "inductor compiles each shape cold: 25-30 s each",
    "profile_figures.py": "the UMAP's numba compilation alone takes ~20 s in a fresh process",
    "safety_cases.py": "runs every CLI safety case in its own process (minutes)",
    "bench_ensemble_quality.py": "--fast still trains 60 epochs on three data sets",
    "bench_hyperbatch.py": "--fast still trains on PBMC 3k and a hard simulation",
    "bench_seed_agreement.py": "--fast still trains 2 seeds x 80 epochs and a heart model",
    **{
        name: _LONG
        for name in (
            "bench_cell_novelty_scores.py",
            "bench_convvae.py",
            "bench_group_flag_rates.py",
            "bench_group_novelty.py",
            "bench_label_cost.py",
            "bench_label_transfer.py",
            "bench_member_gap.py",
            "bench_query_novelty.py",
            "bench_stability.py",
            "bench_thinning.py",
        )
    },
    **{
        name: _OTHERS
        for name in (
            "bench_de_calibration.py",
            "bench_de_replicates.py",
            "bench_new_sample.py",
            "de_diagnosis.py",
            "de_null_check.py",
            "fdr_normalised_truth.py",
        )
    },
}
NO_SMOKE_YET["scvi_tests.py"] = "runs scvi-tools' own test suite from a clone of scvi-tools"


def test_every_script_is_listed():
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert not scripts - set(SMOKE) - set(NO_SMOKE_YET), "give the new script tiny settings"
    assert not (set(SMOKE) | set(NO_SMOKE_YET)) - scripts, "a listed script is gone"
    assert not set(SMOKE) & set(NO_SMOKE_YET)


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_script_runs_with_tiny_settings(script, tmp_path, monkeypatch):
    args = SMOKE[script]
    if any("{pbmc}" in a for a in args):
        pbmc = DATA / "pbmc3k.h5ad"
        if not pbmc.exists():
            pytest.skip(f"{pbmc} is absent here")
        args = [a.replace("{pbmc}", str(pbmc)) for a in args]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), *args])
    monkeypatch.syspath_prepend(str(BENCH))
    threads = __import__("torch").get_num_threads()
    try:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    except SystemExit as err:  # argparse's exit, or the script's own
        assert err.code in (0, None), f"{script} exited with {err.code}"
    finally:
        __import__("torch").set_num_threads(threads)  # some scripts pin the thread count


def test_analysis_scale_saves_then_analyses_in_a_process_that_never_trained(
    tmp_path, monkeypatch, capsys
):
    # the --save / --load pair measures the analysis' own peak; each half must run
    tiny = ["--members", "2", "--cells", "300", "--n-samples", "2", "--no-embedding"]
    script = str(BENCH / "bench_analysis_scale.py")
    monkeypatch.chdir(tmp_path)
    threads = __import__("torch").get_num_threads()
    try:
        for mode in ("--save", "--load"):
            monkeypatch.setattr(sys, "argv", [script, *tiny, mode, str(tmp_path / "model")])
            runpy.run_path(script, run_name="__main__")
    finally:
        __import__("torch").set_num_threads(threads)
    out = capsys.readouterr().out
    assert "saved to" in out and "loaded from" in out
    assert "uncertainty_analysis" in out.split("loaded from")[1]
