"""Data-parallel training (DDP, gloo on CPU): 2 processes == 1 process on whole minibatches."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KINDS = ["deep", "batch", "hyperbatch"]
#: every configuration each world size trains: one interpreter per rank for all of them
CONFIGS = {1: KINDS, 2: [*KINDS, "deep:no-sync"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """``{world: {config: rank 0's result}}`` for the configurations of :data:`CONFIGS`."""
    root = tmp_path_factory.mktemp("ddp")
    return {world: _launch(root, world, configs) for world, configs in CONFIGS.items()}


def _launch(tmp_path, world: int, configs: list[str]) -> dict:
    port, outs, procs = _free_port(), [], []
    for rank in range(world):
        out = tmp_path / f"world{world}_rank{rank}.pt"
        cmd = [sys.executable, str(WORKER), "--rank", str(rank), "--world", str(world)]
        cmd += ["--port", str(port), "--configs", ",".join(configs), "--out", str(out)]
        procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE))
        outs.append(out)
    try:
        for p in procs:
            _, err = p.communicate(timeout=400)
            assert p.returncode == 0, err.decode()[-3000:]
    finally:  # a failed or hung rank must not outlive the test
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [torch.load(o) for o in outs]
    for config in configs:
        if world > 1 and not config.endswith(":no-sync"):  # DDP keeps the replicas identical
            for key, value in results[0][config]["state"].items():
                torch.testing.assert_close(results[1][config]["state"][key], value, rtol=0, atol=0)
    return results[0]


@pytest.mark.parametrize("kind", ["deep", "batch", "hyperbatch"])
def test_two_process_ddp_matches_one_process(runs, kind):
    one, two = runs[1][kind], runs[2][kind]
    # hyperbatch: train losses with the L2 penalty, and every second step a tune NLL
    assert len(one["losses"]) == (6 if kind == "hyperbatch" else 4)
    torch.testing.assert_close(
        torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-4
    )
    for key, value in one["state"].items():
        # members' weights, BatchEnsemble fast weights, per-member batch-norm statistics,
        # HBE's embeddings and (moved by the tune steps) hyperparameter bounds
        torch.testing.assert_close(two["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    if kind == "hyperbatch":  # the tune steps did move the bounds compared above
        for key in ("hyper.log_low", "hyper.log_high"):
            assert (one["state"][key] - one["start"][key]).abs().max() > 1e-4


def test_without_synced_batch_norm_the_statistics_differ(runs):
    """The check above can fail: per-process batch norm gives other running statistics."""
    one, two = runs[1]["deep"], runs[2]["deep:no-sync"]
    key = next(k for k in one["state"] if k.endswith("running_var"))
    assert (two["state"][key] - one["state"][key]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["deep", "hyperbatch"])
def test_lightning_ddp_through_train(tmp_path, kind):
    """scvi-tools' own DDP path (``train(strategy="ddp", devices=2)``) keeps ranks identical;
    for hyperbatch that includes the bounds tuned by the plan's second optimiser."""
    script = Path(__file__).parent / "helpers" / "ddp_lightning.py"
    env = {**os.environ, "MASTER_PORT": str(_free_port())}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), kind],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["trained"] for r in ranks)
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value, rtol=0, atol=0)
    if kind == "hyperbatch":
        traj = ranks[0]["trajectory"]
        assert traj["step"].nunique() > 1 and traj.equals(ranks[1]["trajectory"])
    assert (tmp_path / "ckpt" / "model.pt").exists()  # written by rank 0 only
    assert not list(tmp_path.glob(".ckpt.tmp-*"))
