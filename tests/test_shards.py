"""Member sharding: shards trained alone merge into the ensemble trained in one piece."""

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ensemblevi.cli import app
from ensemblevi.data import synthetic
from ensemblevi.model import EnsembleSCVI
from ensemblevi.pipeline._train_command import parse_shard

ARCH = {"n_hidden": 16, "n_latent": 4, "seed": 3}
TRAIN = {"max_epochs": 3, "seed": 5, "batch_size": 64, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def adata():
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = synthetic("lopez2020", seed=0, n_cells=300)
    EnsembleSCVI.setup_anndata(data, layer="counts")
    return data


@pytest.fixture(scope="module")
def trained(adata):
    """The whole K = 4 ensemble and its two shards, trained with the same seeds."""
    full = EnsembleSCVI(adata, n_members=4, **ARCH)
    shards = [
        EnsembleSCVI(adata, n_members=2, member_offset=o, n_members_total=4, **ARCH) for o in (0, 2)
    ]
    initial = {k: v.clone() for k, v in full.module.state_dict().items()}
    for m in (full, *shards):
        m.train(**TRAIN)
    return full, shards, initial


def _states_equal(a, b):
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=1e-6, msg=key)


def _same_latent(a, ka, b, kb):
    np.testing.assert_allclose(
        a.members[ka].get_latent_representation(),
        b.members[kb].get_latent_representation(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_merged_shards_equal_the_whole_ensemble(adata, trained):
    full, shards, initial = trained
    # training moved the weights (the comparison below is not between two untrained nets)
    moved = max((full.module.state_dict()[k] - v).abs().max() for k, v in initial.items())
    assert moved > 1e-3
    merged = EnsembleSCVI.merge(shards[::-1])  # order does not matter
    assert merged.n_members == 4 and merged.member_range == (0, 4)
    _states_equal(full, merged)
    # outputs: the ensemble's mean expression and per-member latent means
    a = full.get_normalized_expression(adata, n_samples=3, library_size=1e4, seed=0)
    b = merged.get_normalized_expression(adata, n_samples=3, library_size=1e4, seed=0)
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-5)
    for k in range(4):
        _same_latent(merged, k, full, k)


def test_shard_members_are_the_ensembles_members(adata, trained):
    full, shards, _ = trained
    for shard in shards:
        start, stop = shard.member_range
        for j, k in enumerate(range(start, stop)):
            _same_latent(shard, j, full, k)


def test_a_shard_trained_with_another_seed_differs(adata, trained):
    full, _, _ = trained
    other = EnsembleSCVI(adata, n_members=2, member_offset=2, n_members_total=4, **ARCH)
    other.train(**{**TRAIN, "seed": 6})
    a = full.members[2].get_latent_representation()
    b = other.members[0].get_latent_representation()
    assert np.abs(a - b).max() > 1e-3


def test_shard_save_load_keeps_its_members(adata, trained, tmp_path):
    _, shards, _ = trained
    shards[1].save(tmp_path / "s2")
    loaded = EnsembleSCVI.load(tmp_path / "s2", adata=adata)
    assert loaded.member_range == (2, 4) and loaded.n_members_total == 4
    _states_equal(shards[1], loaded)


def test_shard_and_merge_errors(adata, trained):
    _, shards, _ = trained
    with pytest.raises(ValueError, match="ensemble='deep'"):
        EnsembleSCVI(adata, n_members=2, ensemble="batch", member_offset=2, n_members_total=4)
    with pytest.raises(ValueError, match="seed="):
        EnsembleSCVI(adata, n_members=2, member_offset=2, n_members_total=4)
    with pytest.raises(ValueError, match="do not fit"):
        EnsembleSCVI(adata, n_members=3, member_offset=2, n_members_total=4, seed=1)
    with pytest.raises(ValueError, match="not contiguous"):
        EnsembleSCVI.merge([shards[1], shards[1]])
    stranger = EnsembleSCVI(
        adata, n_members=2, member_offset=0, n_members_total=4, n_hidden=16, n_latent=4, seed=4
    )
    stranger.is_trained_ = True
    with pytest.raises(ValueError, match="different ensemble specifications"):
        EnsembleSCVI.merge([stranger, shards[1]])
    untrained = EnsembleSCVI(adata, n_members=2, member_offset=0, n_members_total=4, **ARCH)
    with pytest.raises(ValueError, match="trained"):
        EnsembleSCVI.merge([untrained, shards[1]])


@pytest.mark.parametrize("k", [1, 4, 7, 10])
def test_parse_shard_covers_every_member_once(k):
    for n in range(1, k + 1):
        parts = [parse_shard(f"{i}/{n}", k) for i in range(1, n + 1)]
        members = [m for offset, size in parts for m in range(offset, offset + size)]
        assert members == list(range(k))
        sizes = [size for _, size in parts]
        assert max(sizes) - min(sizes) <= 1


def test_cli_train_shards_and_merge(tmp_path):
    runner = CliRunner()
    common = ["--preset", "lopez2020", "--n-cells", "200", "--epochs", "2", "--members", "3"]
    common += ["--batch-size", "50", "--seed", "1"]
    for i in (1, 2):
        res = runner.invoke(
            app, ["train", *common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]
        )
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", *common, "--out", str(tmp_path / "whole")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["merge", str(tmp_path / "s2"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "train.json").read_text())["member_range"] == [0, 3]
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)["model_state_dict"]
    merged = torch.load(tmp_path / "m" / "model.pt", weights_only=False)["model_state_dict"]
    for key in whole:
        torch.testing.assert_close(merged[key], whole[key], rtol=0, atol=1e-6)
    res = runner.invoke(app, ["train", *common, "--shard", "3/2", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "1 <= I <= N" in res.output

    # one shard of the ensemble: refused, naming the missing member, unless --partial
    res = runner.invoke(app, ["merge", str(tmp_path / "s1"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "members 2..2 are missing" in res.output
    assert "--partial" in res.output and not (tmp_path / "p").exists()
    res = runner.invoke(
        app, ["merge", str(tmp_path / "s1"), "--out", str(tmp_path / "p"), "--partial"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "train.json").read_text())["member_range"] == [0, 2]

    # never into a folder of the user's, nor over a shard `train` wrote
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    shard_files = sorted(p.name for p in (tmp_path / "s1").iterdir())
    for target in (mine, tmp_path / "s1"):
        res = runner.invoke(
            app, ["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(target)]
        )
        assert res.exit_code == 2 and "hoose another output directory" in res.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == shard_files


def test_missing_members():
    from ensemblevi.model._shards import missing_members

    assert missing_members([[0, 2], [2, 3]], 3) == []
    assert missing_members([[2, 3]], 4) == [(0, 2), (3, 4)]
    assert missing_members([], 2) == [(0, 2)]
