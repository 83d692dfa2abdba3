"""One process of a data-parallel training check (run by tests/test_ddp.py).

One process trains every configuration of ``--configs`` in turn (``kind`` or
``kind:no-sync``), so the interpreter starts once per rank, not once per configuration.
``--world 1`` trains on whole minibatches in one process; ``--world 2 --rank r`` trains
under ``torch.nn.parallel.DistributedDataParallel`` (gloo) on row half ``r`` of the same
minibatches. The latent noise is switched off (z = posterior mean) and dropout is 0, so
the two must agree to float tolerance; writes the per-step losses and final state.

``--kind hyperbatch`` tunes every hyperparameter but the dropout rate (a tuned rate would
draw masks), with lambda fixed at each member's mean for every cell (the per-cell draws
of one process would not be those of its rows in the whole minibatch), the L2 penalty on,
and a tune step (:func:`ensemblevi.train.tune_step`, gradients averaged over the
processes) on the same rows after every second train step.
"""

import argparse
import datetime
import logging
import warnings

import torch
import torch.distributed as dist

import ensemblevi.nn._blocks as blocks  # EnsembleEncoder draws its latent noise here
from ensemblevi.data import synthetic
from ensemblevi.model import EnsembleSCVI
from ensemblevi.module._hyperparameters import L2_GROUPS
from ensemblevi.nn._hyperbatch import LogUniformHyperparameters
from ensemblevi.train._plan import tune_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--port", type=int, default=29511)
    parser.add_argument(
        "--configs",
        default="deep",
        help="comma-separated kind or kind:no-sync (per-process "
        "batch norm), trained one after the other",
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", required=True, help="one .pt file: {config: result}")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("scvi").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    adata = synthetic("lopez2020", seed=0, n_cells=256)
    EnsembleSCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    if args.world > 1:
        dist.init_process_group(
            "gloo",
            rank=args.rank,
            world_size=args.world,
            init_method=f"tcp://127.0.0.1:{args.port}",
            timeout=datetime.timedelta(seconds=120),
        )
    results = {}
    for config in args.configs.split(","):
        kind, _, option = config.partition(":")
        results[config] = train(adata, args, kind, no_sync=option == "no-sync")
    torch.save(results, args.out)
    if args.world > 1:
        # Every rank has finished its collectives here. No destroy_process_group: with
        # gloo it sometimes hung once rank 0 (the TCP store's host) had exited first
        # (pytorch/pytorch#75097); process exit closes the sockets.
        dist.barrier()


def train(adata, args, kind: str, no_sync: bool) -> dict:
    """Train one configuration from its seeded initialisation; its losses and states."""
    hyper = kind == "hyperbatch"
    tuned = {"hyperparameters": ["kl_weight", *(f"l2_{g}" for g in L2_GROUPS)]} if hyper else {}
    model = EnsembleSCVI(
        adata,
        n_members=3,
        ensemble=kind,
        n_hidden=16,
        n_latent=4,
        dropout_rate=0.0,
        seed=1,
        **tuned,
    )
    module = model.module
    module.train()
    blocks.member_draw = lambda shape, n, stream, sample: torch.zeros(shape)
    if hyper:
        LogUniformHyperparameters.sample = lambda self, n: (
            self.mean().unsqueeze(1).expand(-1, n, -1)
        )
        module.l2_scale = 1.0 / adata.n_obs
    if no_sync:
        for m in module.modules():
            if hasattr(m, "sync_stats"):
                m.sync_stats = False
    net = module
    if args.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(module)
    loader = model._make_data_loader(adata=adata, batch_size=64, shuffle=False)
    # SGD: Adam would blow the ~1e-9 gradients of biases followed by batch norm (zero in
    # exact arithmetic) up to full steps, so float noise would decide those biases
    opt = torch.optim.SGD(module.network_parameters(), lr=0.05)
    tune_opt = torch.optim.SGD(module.hyper_parameters(), lr=0.05) if hyper else None
    start = {k: v.clone() for k, v in module.state_dict().items()}
    losses = []
    for step, batch in zip(range(args.steps), loader, strict=False):
        if args.world > 1:
            half = batch["X"].shape[0] // args.world
            rows = slice(args.rank * half, (args.rank + 1) * half)
            batch = {k: v[rows] if torch.is_tensor(v) else v for k, v in batch.items()}
        _, _, out = net(batch)
        loss = out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = loss.detach().clone()
        if args.world > 1:
            dist.all_reduce(value)
            value /= args.world
        losses.append(float(value))
        if hyper and step % 2 == 1:
            losses.append(tune_step(module, batch, tune_opt, tau=1e-3))  # processes' mean
    return {"losses": losses, "state": module.state_dict(), "start": start}


if __name__ == "__main__":
    main()
