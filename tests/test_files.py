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
