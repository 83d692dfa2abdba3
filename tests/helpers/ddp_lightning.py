"""``EnsembleSCVI.train(strategy="ddp", devices=2)`` on CPU (run by tests/test_ddp.py).

Lightning's DDP launcher re-runs this script as rank 1; each rank writes its weights.
Arguments: the output directory and the ensemble kind (default ``deep``).
"""

import os
import sys
import warnings

import torch

from ensemblevi.data import synthetic
from ensemblevi.model import EnsembleSCVI

warnings.filterwarnings("ignore")
out = sys.argv[1]
kind = sys.argv[2] if len(sys.argv) > 2 else "deep"
adata = synthetic("lopez2020", seed=0, n_cells=300)
EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
model = EnsembleSCVI(adata, n_members=3, ensemble=kind, n_hidden=16, n_latent=4, seed=1)
model.train(
    max_epochs=2,
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    batch_size=50,
    seed=0,
    enable_progress_bar=False,
    checkpoint_path=os.path.join(out, "ckpt"),
    plan_kwargs={"tune_every": 2} if kind == "hyperbatch" else None,
)
rank = os.environ.get("LOCAL_RANK", "0")
torch.save(
    {
        "state": model.module.state_dict(),
        "trained": model.is_trained,
        "trajectory": getattr(model, "hyper_trajectory_", None),
    },
    os.path.join(out, f"rank{rank}.pt"),
)
