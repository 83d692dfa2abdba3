"""The one file writer: atomic files and owned output directories."""

import json
import os

import pandas as pd
import pytest

from ensemblevi import _files as F


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), F.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary left
    F.write_text(target, "new")
    assert target.read_text() == "new"
    with pytest.raises(FileExistsError, match="overwrite"):
        F.write_text(target, "x", overwrite=False)
    assert target.read_text() == "new"


def test_temporary_keeps_suffix_and_prefix(tmp_path):
    with F.atomic_file(tmp_path / "fig.png") as tmp:
        assert tmp.name.startswith(F.TMP_PREFIX) and tmp.suffix == ".png"
        tmp.write_bytes(b"x")


def test_write_csv_and_json(tmp_path):
    frame = pd.DataFrame({"a": [1, 2]}, index=["x", "y"])
    F.write_csv(frame, tmp_path / "t.csv")
    assert pd.read_csv(tmp_path / "t.csv", index_col=0).equals(frame)
    F.write_json(tmp_path / "r.json", {"p": tmp_path})
    assert json.loads((tmp_path / "r.json").read_text()) == {"p": str(tmp_path)}


def test_move_into_leaves_other_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_text("new")
    (src / "sub" / "x.txt").write_text("x")
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    (dst / "model.pt").write_text("old")
    moved = F.move_into(src, dst)
    assert sorted(map(str, moved)) == ["model.pt", "sub/x.txt"]
    assert (dst / "notes.txt").read_text() == "mine"
    assert (dst / "model.pt").read_text() == "new"


def test_output_directory_refuses_foreign_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "data.h5ad").write_text("user data")
    with pytest.raises(FileExistsError, match="not written by ensemblevi"):
        F.OutputDirectory(d, "train").claim()
    assert os.listdir(d) == ["data.h5ad"]


def test_output_directory_refuses_other_command(tmp_path):
    F.OutputDirectory(tmp_path / "d", "train").claim()
    with pytest.raises(FileExistsError, match="ensemblevi train"):
        F.OutputDirectory(tmp_path / "d", "run").claim()


def _stage(out, files):
    stage = out.new_stage()
    for rel, text in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)


def test_commit_swaps_in_and_removes_only_own_files(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    _stage(out, {"report.html": "r1", "tables/a.csv": "a1", "tables/b.csv": "b1"})
    out.commit()
    assert out.files == ["report.html", "tables/a.csv", "tables/b.csv"]
    # the user drops a file of their own into the directory
    (out.path / "tables" / "mine.csv").write_text("user")
    _stage(out, {"report.html": "r2", "tables/a.csv": "a2"})
    # until the commit, the old result is whole
    assert (out.path / "tables" / "b.csv").read_text() == "b1"
    assert (out.path / "report.html").read_text() == "r1"
    out.commit()
    assert (out.path / "report.html").read_text() == "r2"
    assert not (out.path / "tables" / "b.csv").exists()
    assert (out.path / "tables" / "mine.csv").read_text() == "user"
    assert out.files == ["report.html", "tables/a.csv"]
    assert not out.stage.exists()


def test_commit_keeps_named_files(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    _stage(out, {"model/model.pt": "m", "report.html": "r1"})
    out.commit()
    _stage(out, {"report.html": "r2"})
    out.commit(keep=["model/model.pt", "not/ours.txt"])
    assert out.files == ["model/model.pt", "report.html"]
    assert (out.path / "model" / "model.pt").read_text() == "m"


def test_discarded_stage_leaves_old_result(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    _stage(out, {"report.html": "r1"})
    out.commit()
    _stage(out, {"report.html": "half"})
    out.discard_stage()
    assert (out.path / "report.html").read_text() == "r1"
    assert not out.stage.exists()


def test_interrupted_commit_is_rolled_forward(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    _stage(out, {"a.txt": "1", "b.txt": "1"})
    out.commit()
    _stage(out, {"a.txt": "2"})
    # killed after the journal was written, before anything moved
    F.write_json(out.path / F.JOURNAL, {"files": ["a.txt"], "remove": ["b.txt"]})
    F.OutputDirectory(out.path, "run").claim()
    assert (out.path / "a.txt").read_text() == "2"
    assert not (out.path / "b.txt").exists()
    assert out.files == ["a.txt"]
    assert not (out.path / F.JOURNAL).exists()


def test_claim_cleans_only_temporaries(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    (out.path / f"{F.TMP_PREFIX}abc-results.h5ad").write_text("half")
    (out.path / "user.txt").write_text("mine")
    F.OutputDirectory(out.path, "run").claim()
    assert sorted(os.listdir(out.path)) == [F.MANIFEST, "user.txt"]


def test_damaged_manifest_is_refused(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    out.manifest_path.write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        F.OutputDirectory(out.path, "run").claim()


def test_lock_refuses_a_live_writer_and_takes_over_a_dead_one(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    with out.locked():
        with pytest.raises(FileExistsError, match="another ensemblevi process"):
            with F.OutputDirectory(out.path, "run").locked():
                pass
    assert not (out.path / F.LOCK).exists()
    (out.path / F.LOCK).write_text("999999999")  # a pid that cannot be running
    with out.locked():
        assert (out.path / F.LOCK).read_text() == str(os.getpid())


def test_new_stage_keeps_named_entries(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    _stage(out, {"model/model.pt": "m", "report.html": "half"})
    stage = out.new_stage(keep=["model"])
    assert (stage / "model" / "model.pt").read_text() == "m"
    assert not (stage / "report.html").exists()
    assert not any(out.new_stage().iterdir())


def test_a_second_stage_commits_without_touching_the_first(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    _stage(out, {"model/model.pt": "m1", "report.html": "r1"})
    out.commit()
    out.new_stage()
    (out.stage / "model").mkdir()
    (out.stage / "model" / "model.pt").write_text("unfinished run's model")
    de = F.OutputDirectory(out.path, "run", stage=F.STAGE + "-de").claim()
    (de.new_stage() / "tables").mkdir()
    (de.stage / "tables" / "de_a.csv").write_text("x")
    de.commit(keep=de.files)
    assert out.files == ["model/model.pt", "report.html", "tables/de_a.csv"]
    assert (out.path / "model" / "model.pt").read_text() == "m1"
    assert (out.stage / "model" / "model.pt").read_text() == "unfinished run's model"
    with pytest.raises(ValueError, match="stage name"):
        F.OutputDirectory(out.path, "run", stage="elsewhere")


def test_journal_names_the_stage_it_commits(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    de = F.OutputDirectory(out.path, "run", stage=F.STAGE + "-de")
    (de.new_stage() / "a.txt").write_text("2")
    F.write_json(out.path / F.JOURNAL, {"files": ["a.txt"], "remove": [], "stage": de.stage_name})
    F.OutputDirectory(out.path, "run").claim()  # another instance rolls it forward
    assert (out.path / "a.txt").read_text() == "2" and not de.stage.exists()


def test_claim_leaves_a_live_writers_files_alone(tmp_path):
    out = F.OutputDirectory(tmp_path / "run", "run").claim()
    tmp = out.path / f"{F.TMP_PREFIX}abc-report.html"
    tmp.write_text("being written")
    (out.path / F.LOCK).write_text(str(os.getppid()))  # another process, alive
    with pytest.raises(FileExistsError, match="another ensemblevi process"):
        F.OutputDirectory(out.path, "run").claim()
    assert tmp.read_text() == "being written"
    (out.path / F.LOCK).write_text(str(os.getpid()))  # this process's own lock is no writer
    F.OutputDirectory(out.path, "run").claim()
    assert not tmp.exists()


# ------------------------------------------------------------------ crafted bookkeeping
def _victims(tmp_path):
    """Files outside the output folder that a crafted manifest or journal points at."""
    victims = {
        tmp_path / "victim" / "important.txt": "keep me",
        tmp_path / "victim2" / "x.txt": "mine too",
        tmp_path / "victim3" / "data.txt": "and this",
    }
    for path, text in victims.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return victims


def _tree(path):
    return {
        str(p.relative_to(path)): (
            p.read_bytes()
            if p.is_file() and not p.is_symlink()
            else os.readlink(p)
            if p.is_symlink()
            else None
        )
        for p in sorted(path.rglob("*"))
    }


def _crafted(tmp_path, kind, command="run"):
    """An output folder of ``command`` whose bookkeeping leads outside it (``kind``)."""
    out = F.OutputDirectory(tmp_path / "out", command).claim()
    _stage(out, {"report.html": "r1", "tables/a.csv": "a"})
    out.commit()
    victim = str(tmp_path / "victim" / "important.txt")
    manifest = {"command": command, "files": ["report.html", "tables/a.csv"]}
    if kind == "manifest-relative":
        manifest["files"].append("../victim/important.txt")
    elif kind == "manifest-absolute":
        manifest["files"].append(victim)
    elif kind == "manifest-symlink":
        (out.path / "link").symlink_to(tmp_path / "victim")
        manifest["files"].append("link/important.txt")
    elif kind == "journal":
        F.write_json(
            out.path / F.JOURNAL,
            {"files": ["report.html"], "stage": "../victim2", "remove": ["../victim3/data.txt"]},
        )
    elif kind == "journal-absolute":
        F.write_json(
            out.path / F.JOURNAL, {"files": ["report.html"], "stage": F.STAGE, "remove": [victim]}
        )
    elif kind == "stage-symlink":
        (out.path / F.STAGE).symlink_to(tmp_path / "victim2", target_is_directory=True)
    elif kind == "tables-symlink":  # a committed folder replaced by a link pointing out
        (out.path / "tables" / "a.csv").unlink()
        (out.path / "tables").rmdir()
        (out.path / "tables").symlink_to(tmp_path / "victim3", target_is_directory=True)
        manifest["files"] = ["report.html", "tables/data.txt"]
    F.write_json(out.path / F.MANIFEST, manifest)
    return out.path


KINDS = [
    "manifest-relative",
    "manifest-absolute",
    "manifest-symlink",
    "journal",
    "journal-absolute",
    "stage-symlink",
    "tables-symlink",
]


@pytest.mark.parametrize("kind", KINDS)
def test_bookkeeping_that_leads_out_is_refused_before_anything_is_touched(tmp_path, kind):
    victims = _victims(tmp_path)
    path = _crafted(tmp_path, kind)
    before = _tree(path)
    for attempt in (
        lambda: F.OutputDirectory(path, "run").claim(),
        lambda: F.staged_output(path, "run").__enter__(),
    ):
        with pytest.raises(F.UnsafePathError, match="nothing was touched") as err:
            attempt()
        assert (
            "outside" in str(err.value)
            or "absolute" in str(err.value)
            or ("not a commit journal" in str(err.value))
        )
    assert _tree(path) == before  # the folder is left as it was
    assert all(p.read_text() == text for p, text in victims.items())


def test_contained_is_the_one_check(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "inner").symlink_to(root / "sub", target_is_directory=True)  # stays inside: fine
    (root / "outer").symlink_to(tmp_path, target_is_directory=True)
    assert F.contained(root, "sub/a.txt") == root / "sub" / "a.txt"
    assert F.contained(root, "inner/a.txt") == root / "inner" / "a.txt"
    assert F.contained(root, "sub/../a.txt") == root / "sub" / ".." / "a.txt"
    for bad in ("../x", "/etc/passwd", "outer/x", "sub/../../x", ".", "", "a\x00b", 3):
        with pytest.raises(F.UnsafePathError):
            F.contained(root, bad, source="the manifest")
    # a root reached through a link is fine: the check is on where paths resolve
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert F.contained(tmp_path / "alias", "sub/a.txt") == tmp_path / "alias" / "sub" / "a.txt"


def test_a_checkpoint_record_that_leads_out_is_refused(tmp_path):
    from ensemblevi.train._callbacks import EpochCheckpoint

    ckpt = tmp_path / "ckpt"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.pt").write_text("x")
    ckpt.mkdir()
    for model in ("../elsewhere", str(tmp_path / "elsewhere")):
        F.write_json(ckpt / "checkpoint.json", {"epochs_done": 1, "model": model})
        with pytest.raises(F.UnsafePathError, match=r"checkpoint\.json"):
            EpochCheckpoint.read(ckpt)


def test_a_symlink_in_the_stage_is_never_followed(tmp_path):
    _victims(tmp_path)
    out = F.OutputDirectory(tmp_path / "out", "run").claim()
    stage = out.new_stage()
    (stage / "model").symlink_to(tmp_path / "victim", target_is_directory=True)
    with pytest.raises(F.UnsafePathError, match="symbolic link"):
        out.commit()
    assert (tmp_path / "victim" / "important.txt").read_text() == "keep me"
    out.new_stage(keep=["model"])  # a kept name that is a link goes (the link, not its target)
    assert not (stage / "model").exists() and (tmp_path / "victim" / "important.txt").exists()


# ------------------------------------------------------------------ every command's claim
def _dummy_run(path):
    """The files `de` and `map` check for before they claim: never read further here."""
    for rel in ("run.json", "results.h5ad", "model/model.pt"):
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text("x")


@pytest.mark.parametrize("command", ["run", "de", "map", "annotate", "train", "merge"])
@pytest.mark.parametrize("kind", ["manifest-relative", "journal", "manifest-symlink"])
def test_every_command_refuses_crafted_bookkeeping(tmp_path, command, kind):
    from ensemblevi.data import synthetic
    from ensemblevi.data._io import write_h5ad_atomic
    from ensemblevi.pipeline import RunConfig, run_annotate, run_de, run_map, run_pipeline
    from ensemblevi.pipeline._train_command import merge_command, train_command

    victims = _victims(tmp_path)
    owner = {"de": "run"}.get(command, command)
    path = _crafted(tmp_path, kind, owner)
    if command == "de":  # de writes into the run's own folder
        _dummy_run(path)
    before = _tree(path)
    cells = tmp_path / "cells.h5ad"
    write_h5ad_atomic(synthetic("lopez2020", n_cells=30, n_genes=20), cells)
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "model.pt").write_text("x")
    F.write_json(shard / "train.json", {"spec": {"members": 2}, "member_range": [0, 2]})
    run_dir = tmp_path / "the_run"
    _dummy_run(run_dir)
    spec = {"epochs": 1, "members": 2, "batch_size": 10}
    calls = {
        "run": lambda: run_pipeline(RunConfig(markers=None), path, log=lambda *a: None),
        "de": lambda: run_de(path, "A"),
        "map": lambda: run_map(run_dir, cells, path, layer="counts", log=lambda *a: None),
        "annotate": lambda: run_annotate(
            cells, path, "cell_type", layer="counts", log=lambda *a: None
        ),
        "train": lambda: train_command(spec, path, log=lambda *a: None),
        "merge": lambda: merge_command([shard], path),
    }
    with pytest.raises(F.UnsafePathError):
        calls[command]()
    assert _tree(path) == before
    assert all(p.read_text() == text for p, text in victims.items())


def test_cli_refuses_a_crafted_journal_with_exit_2_and_the_victims_intact(tmp_path):
    from typer.testing import CliRunner

    from ensemblevi import cli

    victims = _victims(tmp_path)
    path = _crafted(tmp_path, "journal")
    _dummy_run(path)
    before = _tree(path)
    res = CliRunner().invoke(cli.app, ["de", str(path), "--group1", "A"], env={"COLUMNS": "1000"})
    assert res.exit_code == 2, res.output
    assert "commit journal" in res.output or "outside" in res.output
    assert _tree(path) == before
    assert all(p.read_text() == text for p, text in victims.items())


# ------------------------------------------------------------------ unwritable, full disk
def test_an_unwritable_out_is_a_named_error(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    # root ignores permission bits, so the refusal of the file system is simulated
    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(F.OutputNotWritableError, match="not writable for you"):
        F.OutputDirectory(tmp_path / "ro" / "out", "run").claim()
    monkeypatch.undo()
    out = tmp_path / "ro2"
    out.mkdir()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(out))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(F.OutputNotWritableError, match="read-only file system"):
        F.OutputDirectory(out, "run").claim()
    monkeypatch.undo()
    assert os.listdir(out) == []  # nothing left: no manifest, no temporary


def test_a_full_disk_on_a_new_folder_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    out = tmp_path / "new"
    real = os.replace

    def full(src, dst):
        if str(dst).endswith(".csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(F.OutputNotWritableError, match="disk is full"):
        with F.staged_output(out, "map") as d:
            F.write_text(d.stage / "report.html", "r")
            F.write_csv(pd.DataFrame({"a": [1]}), d.stage / "tables" / "t.csv")
    assert not out.exists()  # no stage, no temporary, no lock, no manifest
    monkeypatch.undo()
    # an existing result stays whole, and only the stage goes
    with F.staged_output(out, "map") as d:
        F.write_text(d.stage / "report.html", "r1")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(F.OutputNotWritableError):
        with F.staged_output(out, "map") as d:
            F.write_csv(pd.DataFrame({"a": [1]}), d.stage / "t.csv")
    assert sorted(os.listdir(out)) == [F.MANIFEST, "report.html"]


def test_staged_output_commits_or_discards(tmp_path):
    out = tmp_path / "o"
    with F.staged_output(out, "map") as d:
        F.write_text(d.stage / "a.txt", "1")
    assert F.OutputDirectory(out, "map").files == ["a.txt"]
    with pytest.raises(FileExistsError, match="--force"):
        with F.staged_output(out, "map", replace=False):
            pass
    with pytest.raises(RuntimeError):
        with F.staged_output(out, "map") as d:
            F.write_text(d.stage / "b.txt", "half")
            raise RuntimeError("failed")
    assert sorted(os.listdir(out)) == [F.MANIFEST, "a.txt"]
    with F.staged_output(out, "map") as d:  # abandoned: nothing changes
        F.write_text(d.stage / "c.txt", "x")
        d.abandon()
    assert sorted(os.listdir(out)) == [F.MANIFEST, "a.txt"]
    with pytest.raises(RuntimeError):  # keep_stage: a stage holding files survives a failure
        with F.staged_output(out, "map", keep_stage=["model"]) as d:
            F.write_text(d.stage / "model" / "m.pt", "w")
            raise RuntimeError("analysis failed")
    assert (out / F.STAGE / "model" / "m.pt").exists() and not (out / F.LOCK).exists()
