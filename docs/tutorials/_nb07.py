"""07: scaling up."""

CELLS = [
    (
        "md",
        """
# Scaling up: a GPU, several processes, member shards, files larger than memory

**The question.** The examples so far train four members on a few thousand cells on a
laptop CPU. What changes for an atlas: a GPU, several GPUs, an ensemble too large for one
device or one job, a file too large for memory?

Short answer: nothing in the analysis. Training goes through scvi-tools' Lightning
trainer (its `accelerator`, `devices` and `strategy` arguments), members can be trained
as independent jobs and merged, and every output streams over cells. This notebook shows
each with tiny settings; the commands are the same at full size.""",
    ),
    ("setup", ""),
    (
        "code",
        """
import re
import shutil
import subprocess
import sys
import tempfile

import anndata
import torch

work = Path(tempfile.mkdtemp(prefix="ev-scaling-"))  # everything this notebook writes
adata = ev.data.synthetic(preset="heartlike", seed=0, n_cells=300 if QUICK else 1500, n_genes=200)
print(f"{adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['batch'].nunique()} batches")""",
    ),
    (
        "md",
        """
## 1. One GPU

The same calls, with the accelerator named; the members are one batched pass, so there is
no Python loop over members and no host-device copy inside a step. `accelerator="auto"`
takes a GPU where there is one:

```python
model.train(max_epochs=100, accelerator="gpu", devices=1)
model.to_device("cuda:0")  # outputs, tl analyses and DE then run on the GPU too
```""",
    ),
    (
        "code",
        """
print("CUDA available:", torch.cuda.is_available())
ev.model.EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
model = ev.model.EnsembleSCVI(adata, n_members=4, ensemble="deep", seed=0)
model.train(max_epochs=2 if QUICK else 10, accelerator="auto", seed=0, enable_progress_bar=False)
print("trained on", model.device)""",
    ),
    (
        "md",
        """
## 2. Several GPUs or nodes

scvi-tools' Lightning DDP works as is; each process takes its share of every minibatch,
and the ensemble's batch-norm statistics are all-reduced across processes, so a DDP run
equals a one-process run on the same minibatches (tested on CPU with two processes).
DDP needs a script, not a notebook:

```python
# train_ddp.py, run with `python train_ddp.py` (or under torchrun / SLURM)
model.train(max_epochs=100, accelerator="gpu", devices=4, strategy="ddp")
model.train(max_epochs=100, accelerator="gpu", devices=8, num_nodes=2, strategy="ddp")
```""",
    ),
    (
        "md",
        """
## 3. Member shards: an ensemble as independent jobs

When K members do not fit one device, or a scheduler hands out small jobs, train members
`i..j` of one ensemble specification separately and merge them. A shard initialises its
members and draws its random numbers as slices of the whole ensemble's, so with the same
seed the merged model **equals** the ensemble trained in one piece. In Python:""",
    ),
    (
        "code",
        """
epochs = 2 if QUICK else 10
shards = []
for offset in (0, 2):  # two shards of two members each, of a K = 4 ensemble
    shard = ev.model.EnsembleSCVI(
        adata, n_members=2, member_offset=offset, n_members_total=4, seed=0
    )
    shard.train(max_epochs=epochs, seed=0, enable_progress_bar=False)
    shards.append(shard)
merged = ev.model.EnsembleSCVI.merge(shards)

whole = ev.model.EnsembleSCVI(adata, n_members=4, ensemble="deep", seed=0)
whole.train(max_epochs=epochs, seed=0, enable_progress_bar=False)
a = merged.get_normalized_expression(return_members=True)
b = whole.get_normalized_expression(return_members=True)
print("members:", merged.n_members, "| largest difference from the one-piece model:",
      float(np.abs(np.asarray(a) - np.asarray(b)).max()))""",
    ),
    (
        "md",
        """
**Reading.** The largest difference over every member, cell and gene is 0.0: the two
shards, trained apart, are exactly the four members the one-piece training gives. Sharding is for
`deep` ensembles (BatchEnsemble members share weights); leave early stopping off, since
it would couple members through the validation loss.

The same from the command line, where each shard is a job of its own (any machine, any
order); `merge` checks that the shards agree on genes, registration, architecture and
seed, and names missing members:""",
    ),
    (
        "code",
        """
cli = shutil.which("ensemblevi", path=str(Path(sys.executable).parent)) or shutil.which(
    "ensemblevi"
)
common = "--data synthetic --n-cells 300 --n-top-genes 200 --members 4 --epochs 2 --seed 0"
common = common.split()


def ensemblevi(*args):
    \"\"\"Run the command line in `work` and show what it printed, less Lightning's banner
    and the table describing the data.\"\"\"
    print("$ ensemblevi", " ".join(args))
    done = subprocess.run([cli, *args], capture_output=True, text=True, cwd=work)
    text = re.sub(r"\\x1b\\[[0-9;]*m", "", done.stdout + done.stderr)
    skip = ("GPU available", "TPU available", "Tip:", "┌", "│", "└")
    kept = [line.strip() for line in text.splitlines() if not any(b in line for b in skip)]
    print("\\n".join(kept), "\\n")
    done.check_returncode()


ensemblevi("train", *common, "--shard", "1/2", "--out", "shards/1")
ensemblevi("train", *common, "--shard", "2/2", "--out", "shards/2")
ensemblevi("merge", "shards/1", "shards/2", "--out", "model")
sorted(p.name for p in (work / "model").iterdir())""",
    ),
    (
        "md",
        """
Every `train` job writes into a directory that is new, empty or its own, checkpoints each
epoch, and continues an interrupted training with `--resume`; `merge` refuses an
incomplete set of shards unless told `--partial`.

## 4. Files larger than memory

Counts stay sparse, minibatches are read one at a time, and a file opened `backed="r"`
works as it is (scvi-tools then reads each minibatch in sorted row order, so training
matches in-memory training in distribution, not bit for bit). For the outputs,
`get_uncertainty(return_frames=False, store_layers=False)` keeps only per-gene and
per-cell summaries, never a cells x genes array (that would be 32 GB for a million cells
and 2,000 genes).""",
    ),
    (
        "code",
        """
path = work / "cells.h5ad"
adata.write_h5ad(path)
backed = anndata.read_h5ad(path, backed="r")
print(f"{backed.n_obs} cells x {backed.n_vars} genes, backed: {backed.isbacked}")

ev.model.EnsembleSCVI.setup_anndata(backed, layer="counts", batch_key="batch")
model_b = ev.model.EnsembleSCVI(backed, n_members=4, ensemble="deep", seed=0)
model_b.train(max_epochs=1 if QUICK else 5, seed=0, enable_progress_bar=False)
res = model_b.get_uncertainty(
    backed, n_samples=5, return_frames=False, store_layers=False, key_added="ev", progress=False
)
res["genes"].sort_values("cv_between", ascending=False).head()""",
    ),
    (
        "md",
        """
**Reading.** One row per gene: the mean over cells of the between-member, within-member
and count-noise variances of its normalised expression and their summaries, accumulated
chunk by chunk. `ev.tl.expression_spread`, `gene_uncertainty` and `cell_novelty` stream
the same way. Several files work as one data set through scvi-tools' `AnnCollection`
adapter (use `key_added=None` there: a collection has no `var` to write into).

What the project measured (`benchmarks/bench_atlas.py`, `docs/benchmarks.md`): 500,000
cells x 2,000 genes, deep K = 4, one epoch and the full uncertainty summary peak at 1.5
GB resident backed (5.2 GB in memory), at 2,500-2,700 cells/s training on 2 CPU cores.""",
    ),
    ("code", """shutil.rmtree(work)"""),
]
