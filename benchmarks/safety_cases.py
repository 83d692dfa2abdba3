"""The file-safety and error cases of the reliability issue, run through the CLI and the API.

Each case runs as a new user would (a subprocess of the ``ensemblevi`` command, or a
short API call) on 300-cell subsets of PBMC 3k and Paul15 with a tiny model, and is
judged by three rules: no file the user had is lost or changed, no command that failed
exits 0, and each error names the problem. Prints a markdown table (one row per case)
and the count of cases that pass.

    .venv/bin/python benchmarks/safety_cases.py [--only NAME ...] [--out table.md]

Needs ../shared/data/pbmc3k.h5ad and paul15.h5ad. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anndata
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLI = [sys.executable, "-c", "from ensemblevi.cli import main; main()"]
TINY = ["--epochs", "2", "--members", "2", "--n-top-genes", "150", "--n-samples", "2"]
PBMC = ["--markers", "pbmc3k", "--labels-key", "cell_type"]
CASES: dict[str, tuple[str, Callable]] = {}


def case(name: str, expected: str):
    def wrap(fn):
        CASES[name] = (expected, fn)
        return fn

    return wrap


def cli(*args, cwd: Path, timeout: float = 600, kill_after: Callable | None = None, sig=None):
    """(returncode, output) of ``ensemblevi ARGS``; ``kill_after`` polls until it is true."""
    proc = subprocess.Popen(
        [*CLI, *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    if kill_after is not None:
        t0 = time.time()
        while proc.poll() is None and not kill_after() and time.time() - t0 < timeout:
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (the user's files before a command)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def kept(before: dict[str, str], folder: Path) -> str:
    """'' when every file of ``before`` is still there unchanged, else what was lost."""
    now = digest(folder) if folder.exists() else {}
    lost = [k for k, v in before.items() if now.get(k) != v]
    return "" if not lost else f"lost/changed: {', '.join(lost[:4])}"


def last_error(out: str) -> str:
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "refus" in ln.lower() or "interrupt" in ln.lower():
            return ln[:160]
    return (lines[-1] if lines else "")[:160]


def subset(src: str, n: int, path: Path, seed: int = 0) -> Path:
    adata = anndata.read_h5ad(SHARED / src)
    idx = np.random.default_rng(seed).choice(adata.n_obs, n, replace=False)
    adata[np.sort(idx)].copy().write_h5ad(path)
    return path


def reused(log: str) -> bool:
    """Whether the run said it reused a trained model ("not reusing ..." is the opposite)."""
    return "reusing the trained model" in log.lower()


def failed_clearly(rc: int, out: str, *words: str) -> tuple[bool, str]:
    named = all(w.lower() in out.lower() for w in words)
    tb = "Traceback (most recent call last)" in out
    ok = rc not in (0, None) and named and not tb
    return ok, f"rc {rc}; {'traceback; ' if tb else ''}{last_error(out)}"


# ------------------------------------------------------------------ files
@case("train --out DIR holding the input and notes", "refused or writes beside; nothing lost")
def train_into_user_dir(tmp: Path, data: dict):
    d = tmp / "d"
    d.mkdir()
    shutil.copy(data["pbmc"], d / "data.h5ad")
    (d / "notes.txt").write_text("x")
    before = digest(d)
    rc, out = cli(
        "train", "--data", d / "data.h5ad", *TINY[:4], "--n-top-genes", "150", "--out", d, cwd=tmp
    )
    lost = kept(before, d)
    return not lost, f"rc {rc}; {lost or 'user files intact'}; {last_error(out)}"


@case("merge --out DIR holding user files", "refused or writes beside; nothing lost")
def merge_into_user_dir(tmp: Path, data: dict):
    shards = []
    for i in (1, 2):
        s = tmp / f"s{i}"
        rc, out = cli(
            "train",
            "--data",
            data["pbmc"],
            "--epochs",
            "1",
            "--members",
            "2",
            "--n-top-genes",
            "150",
            "--shard",
            f"{i}/2",
            "--out",
            s,
            cwd=tmp,
        )
        if rc != 0:
            return False, f"shard training failed: {last_error(out)}"
        shards.append(s)
    d = tmp / "m"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    before = digest(d)
    rc, out = cli("merge", *shards, "--out", d, cwd=tmp)
    lost = kept(before, d)
    return not lost, f"rc {rc}; {lost or 'user files intact'}; {last_error(out)}"


@case("model.save(DIR, overwrite=True) with other files in DIR", "other files kept")
def save_keeps_other_files(tmp: Path, data: dict):
    code = f"""
import anndata, ensemblevi as ev
a = anndata.read_h5ad({str(data["pbmc"])!r}); ev.data.preprocess(a, n_top_genes=100)
ev.model.EnsembleSCVI.setup_anndata(a, layer='counts')
m = ev.model.EnsembleSCVI(a, n_members=2); m.train(max_epochs=1)
m.save({str(tmp / "d")!r}, overwrite=True)
"""
    d = tmp / "d"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    before = digest(d)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lost = kept(before, d)
    ok = res.returncode == 0 and not lost and (d / "model.pt").exists()
    return ok, f"rc {res.returncode}; {lost or 'notes.txt kept'}"


@case("train over a finished model with other options", "refused without --force")
def train_over_finished(tmp: Path, data: dict):
    d = tmp / "t"
    rc, out = cli(
        "train",
        "--data",
        data["pbmc"],
        "--epochs",
        "1",
        "--members",
        "2",
        "--n-top-genes",
        "150",
        "--out",
        d,
        cwd=tmp,
    )
    if rc != 0:
        return False, f"first train failed: {last_error(out)}"
    before = digest(d)
    rc, out = cli(
        "train",
        "--data",
        data["pbmc"],
        "--epochs",
        "2",
        "--members",
        "2",
        "--n-top-genes",
        "150",
        "--out",
        d,
        cwd=tmp,
    )
    lost = kept(before, d)
    return rc != 0 and not lost, f"rc {rc}; {lost or 'model intact'}; {last_error(out)}"


def _run_dir(tmp: Path, data: dict, name="r", extra=()):
    out = tmp / name
    rc, log = cli("run", "--data", data["pbmc"], *TINY, *PBMC, *extra, "--out", out, cwd=tmp)
    return out, rc, log


@case("run --force interrupted (SIGTERM) in the analysis", "old run whole, rc != 0")
def run_force_interrupted(tmp: Path, data: dict):
    out, rc, log = _run_dir(tmp, data)
    if rc != 0:
        return False, f"first run failed: {last_error(log)}"
    before = digest(out)

    def new_model_trained():  # the new run's model is saved; its analysis has begun
        return any(".ensemblevi-stage" in str(p) for p in out.rglob("model.pt"))

    # a second run with other epochs, killed after its training
    rc, log = cli(
        "run",
        "--data",
        data["pbmc"],
        *TINY[:1],
        "3",
        *TINY[2:],
        *PBMC,
        "--force",
        "--out",
        out,
        cwd=tmp,
        sig=signal.SIGTERM,
        kill_after=new_model_trained,
    )
    if rc == 0:
        return False, "the new run finished before the signal (case not exercised)"
    now = digest(out)
    whole = all(now.get(k) == v for k, v in before.items() if not k.startswith("."))
    ok = rc not in (0, None) and whole
    return ok, f"rc {rc}; {'old run whole' if whole else 'old run damaged'}; {last_error(log)}"


@case("changed input file, same command", "no reuse of the stale model")
def changed_input(tmp: Path, data: dict):
    src = tmp / "in.h5ad"
    shutil.copy(data["pbmc"], src)
    out = tmp / "r"
    args = ["run", "--data", src, *TINY, *PBMC, "--out", out]
    rc, log = cli(*args, cwd=tmp)
    if rc != 0:
        return False, f"first run failed: {last_error(log)}"
    subset("pbmc3k.h5ad", 300, src, seed=7)  # other cells, same path
    rc, log = cli(*args, cwd=tmp)
    again = reused(log)
    return not again, f"rc {rc}; {'REUSED' if again else 'not reused'}; {last_error(log)}"


@case("--seeds after --force with other data", "seed models not reused across data")
def seeds_other_data(tmp: Path, data: dict):
    out = tmp / "s"
    base = ["--epochs", "1", "--seeds", "2", "--n-top-genes", "150", "--n-samples", "2"]
    rc, log = cli("run", "--data", data["pbmc"], *base, *PBMC, "--out", out, cwd=tmp)
    if rc != 0:
        return False, f"first run failed: {last_error(log)}"
    # a reused seed model would be the old file itself
    old = digest(out / "seeds") if (out / "seeds").exists() else {}
    rc, log = cli(
        "run",
        "--data",
        data["paul"],
        *base,
        "--marker",
        "2Ery=Car2,Klf1",
        "--force",
        "--out",
        out,
        cwd=tmp,
    )
    new = digest(out / "seeds") if (out / "seeds").exists() else {}
    same = [k for k, v in new.items() if k.endswith("model.pt") and old.get(k) == v]
    return rc == 0 and not same, f"rc {rc}; {len(same)} seed model(s) reused; {last_error(log)}"


def _signal_case(tmp: Path, data: dict, command: str, sig, code: int):
    out = tmp / f"{command}-{int(sig)}"
    args = (
        [
            "run",
            "--data",
            data["pbmc"],
            "--epochs",
            "400",
            "--members",
            "2",
            "--n-top-genes",
            "150",
            *PBMC,
            "--out",
            out,
        ]
        if command == "run"
        else [
            "train",
            "--data",
            data["pbmc"],
            "--epochs",
            "400",
            "--members",
            "2",
            "--n-top-genes",
            "150",
            "--out",
            out,
        ]
    )
    t0 = time.time()
    rc, log = cli(*args, cwd=tmp, sig=sig, kill_after=lambda: time.time() - t0 > 20)
    ok = rc == code
    return ok, f"rc {rc} (want {code}); {last_error(log)}"


@case("SIGTERM during run", "exit 143, says what was kept")
def sigterm_run(tmp, data):
    return _signal_case(tmp, data, "run", signal.SIGTERM, 143)


@case("SIGTERM during train", "exit 143, checkpoint kept")
def sigterm_train(tmp, data):
    return _signal_case(tmp, data, "train", signal.SIGTERM, 143)


@case("SIGINT during train", "exit 130, no NameError message")
def sigint_train(tmp, data):
    ok, detail = _signal_case(tmp, data, "train", signal.SIGINT, 130)
    return ok and "NameError" not in detail, detail


@case("de on groups 'CD4 T' and 'CD4+ T'", "two results, neither replaced")
def de_collision(tmp: Path, data: dict):
    src = tmp / "lab.h5ad"
    a = anndata.read_h5ad(data["pbmc"])
    labels = np.where(np.arange(a.n_obs) % 3 == 0, "CD4 T", "CD4+ T").astype(object)
    labels[np.arange(a.n_obs) % 3 == 2] = "other"
    a.obs["grp"] = labels
    a.write_h5ad(src)
    out = tmp / "r"
    rc, log = cli(
        "run",
        "--data",
        src,
        *TINY,
        "--marker",
        "CD4 T=IL7R,CD3E",
        "--labels-key",
        "grp",
        "--out",
        out,
        cwd=tmp,
    )
    if rc != 0:
        return False, f"run failed: {last_error(log)}"
    for g in ("CD4 T", "CD4+ T"):
        rc, log = cli("de", out, "--groupby", "grp", "--group1", g, "--n-samples", "5", cwd=tmp)
        if rc != 0:
            return False, f"de failed: {last_error(log)}"
    tables = sorted(p.name for p in (out / "tables").glob("de_*.csv"))
    return len(tables) == 2, f"tables: {tables}"


@case("run on 9,000 cells (above scanpy's pynndescent switch)", "finishes, model saved")
def above_switch(tmp, data):
    out = tmp / "big"
    rc, log = cli(
        "run",
        "--n-cells",
        "9000",
        "--epochs",
        "1",
        "--members",
        "2",
        "--n-top-genes",
        "200",
        "--n-samples",
        "2",
        "--out",
        out,
        cwd=tmp,
    )
    models = list(out.rglob("model.pt"))
    return rc == 0 and bool(models), f"rc {rc}; model saved: {bool(models)}; {last_error(log)}"


# ------------------------------------------------------------------ silent nonsense
@case("run --epochs 0", "refused before training")
def epochs_zero(tmp, data):
    _out, rc, log = _run_dir(tmp, data, extra=["--epochs", "0"])
    return failed_clearly(rc, log, "epoch")


@case("run --members 1", "report says no between-member spread")
def members_one(tmp, data):
    out, rc, log = _run_dir(tmp, data, extra=["--members", "1"])
    text = (out / "report.html").read_text() if (out / "report.html").exists() else ""
    bad = "retraining would move these values" in text
    ok = (rc != 0 and "member" in log.lower()) or (rc == 0 and not bad)
    return ok, f"rc {rc}; {'misleading sentence present' if bad else 'no misleading sentence'}"


@case("preprocess(n_top_genes=0)", "ValueError naming n_top_genes")
def hvg_zero(tmp, data):
    code = f"""
import anndata, ensemblevi as ev
a = anndata.read_h5ad({str(data["pbmc"])!r}); ev.data.preprocess(a, n_top_genes=0)
print('n_vars', a.n_vars)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    ok = res.returncode != 0 and "n_top_genes" in res.stderr
    return ok, f"rc {res.returncode}; {last_error(res.stderr or res.stdout)}"


@case("get_elbo on counts with NaN", "named error")
def elbo_nan(tmp, data):
    code = f"""
import anndata, numpy as np, ensemblevi as ev
a = anndata.read_h5ad({str(data["pbmc"])!r}); ev.data.preprocess(a, n_top_genes=100)
ev.model.EnsembleSCVI.setup_anndata(a, layer='counts')
m = ev.model.EnsembleSCVI(a, n_members=2); m.train(max_epochs=1)
b = a.copy(); X = b.layers['counts'].toarray().astype(float); X[0, 0] = np.nan
b.layers['counts'] = X
print('elbo', m.get_elbo(b))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    ok = res.returncode != 0 and "nan" in res.stderr.lower() and "elbo nan" not in res.stdout
    return ok, f"rc {res.returncode}; {last_error(res.stderr or res.stdout)}"


@case("merge of one shard of four members", "refused, names the missing members")
def merge_one_shard(tmp, data):
    s = tmp / "s1"
    rc, log = cli(
        "train",
        "--data",
        data["pbmc"],
        "--epochs",
        "1",
        "--members",
        "4",
        "--n-top-genes",
        "150",
        "--shard",
        "1/2",
        "--out",
        s,
        cwd=tmp,
    )
    if rc != 0:
        return False, f"shard failed: {last_error(log)}"
    rc, log = cli("merge", s, "--out", tmp / "m", cwd=tmp)
    return failed_clearly(rc, log, "member")


# ------------------------------------------------------------------ checked before training
@case("run --labels-key that does not exist", "refused before training")
def labels_missing(tmp, data):
    t0 = time.time()
    _out, rc, log = _run_dir(tmp, data, extra=["--labels-key", "nope", "--epochs", "50"])
    ok, detail = failed_clearly(rc, log, "nope")
    return ok and time.time() - t0 < 60, detail + f" ({time.time() - t0:.0f} s)"


@case("run --n-samples 0", "refused before training")
def n_samples_zero(tmp, data):
    _out, rc, log = _run_dir(tmp, data, extra=["--n-samples", "0", "--epochs", "50"])
    return failed_clearly(rc, log, "samples")


@case("a text file named .h5ad", "named error, no traceback")
def text_h5ad(tmp, data):
    p = tmp / "fake.h5ad"
    p.write_text("not an h5ad")
    rc, log = cli("run", "--data", p, *TINY, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "fake.h5ad")


@case("a truncated .h5ad", "named error, no traceback")
def truncated_h5ad(tmp, data):
    p = tmp / "cut.h5ad"
    raw = Path(data["pbmc"]).read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    rc, log = cli("run", "--data", p, *TINY, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "cut.h5ad")


def _broken_model(tmp, data, content: bytes):
    out, rc, log = _run_dir(tmp, data)
    if rc != 0:
        return False, f"run failed: {last_error(log)}"
    model = next(out.rglob("model.pt"))
    model.write_bytes(content)
    rc, log = cli("de", out, "--group1", "B", "--n-samples", "3", cwd=tmp)
    return failed_clearly(rc, log, "model.pt")


@case("garbage model.pt", "named error with the path")
def garbage_model(tmp, data):
    return _broken_model(tmp, data, b"garbage" * 10)


@case("empty model.pt", "named error with the path")
def empty_model(tmp, data):
    return _broken_model(tmp, data, b"")


@case("run --force with the same configuration and a broken model", "retrains")
def force_broken_model(tmp, data):
    out, rc, log = _run_dir(tmp, data)
    if rc != 0:
        return False, f"run failed: {last_error(log)}"
    next(out.rglob("model.pt")).write_bytes(b"")
    out, rc, log = _run_dir(tmp, data, extra=["--force"])
    return rc == 0, f"rc {rc}; {last_error(log)}"


def _with_obs(tmp, data, column, values, name="o.h5ad"):
    a = anndata.read_h5ad(data["pbmc"])
    a.obs[column] = values(a)
    p = tmp / name
    a.write_h5ad(p)
    return p


@case("NaN in the labels column", "named error or explicit group with a warning")
def nan_labels(tmp, data):
    p = _with_obs(
        tmp,
        data,
        "cell_type",
        lambda a: a.obs["cell_type"].astype(object).where(np.arange(a.n_obs) % 10 > 0),
    )
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--out", tmp / "r", cwd=tmp)
    silent = rc == 0 and "nan" not in log.lower() and "unlabel" not in log.lower()
    return not silent and "Traceback" not in log, f"rc {rc}; {last_error(log)}"


@case("NaN in the batch column", "named error, no traceback")
def nan_batch(tmp, data):
    p = _with_obs(
        tmp, data, "b", lambda a: np.where(np.arange(a.n_obs) % 10 > 0, "x", None).astype(object)
    )
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--batch-key", "b", "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "b")


@case("inspect with missing labels", "mentions the missing labels")
def inspect_missing(tmp, data):
    p = _with_obs(
        tmp,
        data,
        "cell_type",
        lambda a: a.obs["cell_type"].astype(object).where(np.arange(a.n_obs) % 10 > 0),
    )
    rc, log = cli("inspect", p, cwd=tmp)
    ok = rc == 0 and ("missing" in log.lower() or "nan" in log.lower())
    return ok, f"rc {rc}; {'mentioned' if ok else 'not mentioned'}"


@case("per-batch HVG with two batches of 150 cells", "falls back or names the batch")
def hvg_small_batches(tmp, data):
    p = _with_obs(tmp, data, "b", lambda a: np.where(np.arange(a.n_obs) % 2, "x", "y"))
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--batch-key", "b", "--out", tmp / "r", cwd=tmp)
    raw = "svddc" in log or "l2fit" in log
    return (rc == 0 or not raw) and "Traceback" not in log, f"rc {rc}; {last_error(log)}"


@case("per-batch HVG with a batch of one cell", "falls back or names the batch")
def hvg_one_cell(tmp, data):
    p = _with_obs(tmp, data, "b", lambda a: np.where(np.arange(a.n_obs) == 0, "x", "y"))
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--batch-key", "b", "--out", tmp / "r", cwd=tmp)
    raw = "svddc" in log or "l2fit" in log
    return (rc == 0 or not raw) and "Traceback" not in log, f"rc {rc}; {last_error(log)}"


@case("--members 100000", "refused with a memory estimate")
def members_huge(tmp, data):
    rc, log = cli(
        "train",
        "--data",
        data["pbmc"],
        "--members",
        "100000",
        "--epochs",
        "1",
        "--n-top-genes",
        "150",
        "--out",
        tmp / "t",
        cwd=tmp,
        timeout=300,
    )
    return failed_clearly(rc, log, "GiB")


@case("duplicate gene names", "refused, names them")
def dup_genes(tmp, data):
    a = anndata.read_h5ad(data["pbmc"])
    names = a.var_names.to_numpy().copy()
    names[1] = names[0]
    a.var_names = names
    p = tmp / "dg.h5ad"
    a.write_h5ad(p)
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "duplicate")


@case("duplicate cell names", "refused or unique index in cell_novelty.csv")
def dup_cells(tmp, data):
    a = anndata.read_h5ad(data["pbmc"])
    names = a.obs_names.to_numpy().copy()
    names[1] = names[0]
    a.obs_names = names
    p = tmp / "dc.h5ad"
    a.write_h5ad(p)
    out = tmp / "r"
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--out", out, cwd=tmp)
    if rc == 0:
        import pandas as pd

        table = pd.read_csv(out / "tables" / "cell_novelty.csv", index_col=0)
        return table.index.is_unique, f"rc 0; index unique: {table.index.is_unique}"
    return failed_clearly(rc, log, "duplicate")


# ------------------------------------------------------------------ were right before
@case("log-normalised data", "named error")
def lognorm(tmp, data):
    a = anndata.read_h5ad(data["pbmc"])
    a.X = np.log1p(a.X.toarray())
    p = tmp / "ln.h5ad"
    a.write_h5ad(p)
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "integer")


@case("negative values", "named error")
def negative(tmp, data):
    a = anndata.read_h5ad(data["pbmc"])
    X = a.X.toarray()
    X[0, 0] = -1
    a.X = X
    p = tmp / "neg.h5ad"
    a.write_h5ad(p)
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "negative")


@case("NaN counts", "named error")
def nan_counts(tmp, data):
    a = anndata.read_h5ad(data["pbmc"])
    X = a.X.toarray().astype(float)
    X[0, 0] = np.nan
    a.X = X
    p = tmp / "nan.h5ad"
    a.write_h5ad(p)
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "nan")


@case("empty data", "named error")
def empty(tmp, data):
    a = anndata.read_h5ad(data["pbmc"])[:0].copy()
    p = tmp / "empty.h5ad"
    a.write_h5ad(p)
    rc, log = cli("run", "--data", p, *TINY, *PBMC, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "empty")


@case("missing batch key", "named error")
def missing_batch(tmp, data):
    rc, log = cli(
        "run",
        "--data",
        data["pbmc"],
        *TINY,
        *PBMC,
        "--batch-key",
        "donor_x",
        "--out",
        tmp / "r",
        cwd=tmp,
    )
    return failed_clearly(rc, log, "donor_x")


@case("unknown file type", "named error")
def unknown_type(tmp, data):
    p = tmp / "x.loom"
    p.write_text("x")
    rc, log = cli("run", "--data", p, *TINY, "--out", tmp / "r", cwd=tmp)
    return failed_clearly(rc, log, "loom")


@case("--members 0", "named error")
def members_zero(tmp, data):
    _out, rc, log = _run_dir(tmp, data, extra=["--members", "0"])
    return failed_clearly(rc, log, "member")


@case("paths with spaces", "works")
def spaces(tmp, data):
    d = tmp / "my data"
    d.mkdir()
    shutil.copy(data["pbmc"], d / "pb mc.h5ad")
    rc, _log = cli(
        "run", "--data", d / "pb mc.h5ad", *TINY, *PBMC, "--out", tmp / "my out", cwd=tmp
    )
    return rc == 0 and (tmp / "my out" / "report.html").exists(), f"rc {rc}"


@case("interrupted --seeds run resumes", "finished seeds reused")
def seeds_resume(tmp, data):
    out = tmp / "s"
    args = [
        "run",
        "--data",
        data["pbmc"],
        "--epochs",
        "30",
        "--seeds",
        "3",
        "--n-top-genes",
        "150",
        "--n-samples",
        "2",
        *PBMC,
        "--out",
        out,
    ]

    def one_seed_done():
        return len(list(out.rglob("model.pt"))) >= 1

    cli(*args, cwd=tmp, sig=signal.SIGTERM, kill_after=one_seed_done)
    done = {
        p.relative_to(out).parts[-2]: digest(p.parent)["model.pt"]
        for p in out.rglob("seed_*/model.pt")
    }
    rc, _log = cli(*args, cwd=tmp)
    final = {p.parts[-2]: digest(p.parent)["model.pt"] for p in (out / "seeds").rglob("model.pt")}
    kept_seeds = [k for k, v in done.items() if final.get(k) == v]
    ok = rc == 0 and bool(done) and len(kept_seeds) == len(done)
    return ok, f"rc {rc}; {len(kept_seeds)} of {len(done)} finished seed(s) reused"


@case("run into a different run without --force", "refused, old run intact")
def different_run(tmp, data):
    out, rc, log = _run_dir(tmp, data)
    if rc != 0:
        return False, f"run failed: {last_error(log)}"
    before = digest(out)
    out, rc, log = _run_dir(tmp, data, extra=["--epochs", "3"])
    lost = kept(before, out)
    return rc != 0 and not lost, f"rc {rc}; {lost or 'intact'}; {last_error(log)}"


@case("kill while writing results.h5ad", "old results.h5ad whole")
def kill_writing(tmp, data):
    out, rc, log = _run_dir(tmp, data)
    if rc != 0:
        return False, f"run failed: {last_error(log)}"
    before = digest(out)

    def writing():
        return any(
            p.name.endswith("results.h5ad") and p.name != "results.h5ad"
            for p in out.rglob("*results.h5ad")
        )

    rc, log = cli(
        "run",
        "--data",
        data["pbmc"],
        *TINY,
        *PBMC,
        "--force",
        "--epochs",
        "3",
        "--out",
        out,
        cwd=tmp,
        sig=signal.SIGKILL,
        kill_after=writing,
    )
    import anndata as ad

    try:
        ad.read_h5ad(out / "results.h5ad")
        readable = True
    except Exception:
        readable = False
    changed = kept({"results.h5ad": before["results.h5ad"]}, out)
    return readable, f"rc {rc}; results.h5ad readable: {readable}; {changed or 'unchanged'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case function names")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    if not (SHARED / "pbmc3k.h5ad").exists():
        sys.exit(f"{SHARED / 'pbmc3k.h5ad'} is absent: the cases need real counts.")
    rows, t_all = [], time.time()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        data = {
            "pbmc": subset("pbmc3k.h5ad", 300, root / "pbmc300.h5ad"),
            "paul": subset("paul15.h5ad", 300, root / "paul300.h5ad"),
        }
        for name, (expected, fn) in CASES.items():
            if args.only and fn.__name__ not in args.only:
                continue
            tmp = root / fn.__name__
            tmp.mkdir()
            t0 = time.time()
            try:
                ok, detail = fn(tmp, data)
            except Exception as err:  # a broken case is reported, not hidden
                ok, detail = False, f"case raised {type(err).__name__}: {err}"
            detail = detail.replace("|", "/").replace("\n", " ")
            rows.append((name, expected, "pass" if ok else "FAIL", detail, time.time() - t0))
            print(
                f"{'pass' if ok else 'FAIL'} {name}: {detail} ({time.time() - t0:.0f} s)",
                flush=True,
            )
    lines = ["| case | expected | result | what happened |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {e} | {r} | {d} |" for n, e, r, d, _ in rows]
    n_pass = sum(r[2] == "pass" for r in rows)
    lines.append(f"\n{n_pass} of {len(rows)} cases pass ({time.time() - t_all:.0f} s).")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    print(json.dumps({"passed": n_pass, "total": len(rows)}))


if __name__ == "__main__":
    main()
