"""ConvVAE: the convolutional VAE baseline on image arrays, with every ensemble kind.

Images are not AnnData, so this model has its own small training loop (Adam, minibatches,
a progress bar, HBE's alternating train/tune steps) instead of scvi-tools' trainer; the
layers, the hyperparameter distributions, the tune objective, the optimiser's parameter
groups and the tune step are the ones EnsembleSCVI's training plan uses
(:func:`~ensemblevi.train.fast_param_groups`, :func:`~ensemblevi.train.tune_step`).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from scvi.utils import track

from ensemblevi._constants import EnsembleKind, logmeanexp
from ensemblevi._seeding import forked_rng
from ensemblevi.data._images import check_images
from ensemblevi.module._conv_vae import EnsembleConvVAE
from ensemblevi.module._hyperparameters import (
    HyperparameterSpec,
    bounds_record,
    hyperparameter_table,
    trajectory_frame,
)
from ensemblevi.train._plan import fast_param_groups, tune_step


class ConvVAE:
    """A convolutional VAE ensemble on ``(n, h, w)`` images in [0, 1].

    Parameters
    ----------
    images
        Training images (a float array in [0, 1]; checked, never modified).
    ensemble, n_members
        ``single``, ``deep``, ``batch``, ``hyperbatch`` or ``mcdropout``, and K.
    n_latent, channels, n_hidden, likelihood, dropout_rate, hyperparameters
        See :class:`~ensemblevi.module.EnsembleConvVAE`. MC dropout defaults to a dropout
        rate of 0.1 (it needs one); the other kinds to none.
    random_sign_init
        BatchEnsemble fast-weight init, as in :class:`~ensemblevi.module.EnsembleVAE`.
    seed
        Seeds the initialisation.

    Examples
    --------
    >>> images, labels = ev.data.digits()
    >>> vae = ev.model.ConvVAE(images, ensemble="hyperbatch", n_members=4)
    >>> vae.train(max_epochs=50)
    >>> vae.log_likelihood(images).mean()
    """

    def __init__(
        self,
        images,
        ensemble: EnsembleKind = "deep",
        n_members: int = 4,
        n_latent: int = 8,
        channels: tuple[int, int] = (16, 32),
        n_hidden: int = 128,
        likelihood: str = "bernoulli",
        dropout_rate: float | None = None,
        hyperparameters: HyperparameterSpec = None,
        random_sign_init: float = -0.5,
        seed: int | None = None,
    ):
        self.images = check_images(images)
        if dropout_rate is None:
            dropout_rate = 0.1 if ensemble == "mcdropout" else 0.0
        with forked_rng(seed):
            self.module = EnsembleConvVAE(
                self.images.shape[1:],
                n_members=n_members,
                ensemble=ensemble,
                n_latent=n_latent,
                channels=channels,
                n_hidden=n_hidden,
                likelihood=likelihood,
                dropout_rate=dropout_rate,
                hyperparameters=hyperparameters,
                random_sign_init=random_sign_init,
            )
        self.module.eval()
        self.history: pd.DataFrame = pd.DataFrame()
        self.hyper_trajectory_: pd.DataFrame | None = None
        self.train_time_: float | None = None
        self.is_trained = False

    @property
    def n_members(self) -> int:
        return self.module.n_members

    @property
    def ensemble(self) -> str:
        return self.module.ensemble

    def _check(self, images) -> torch.Tensor:
        arr = check_images(images)
        if arr.shape[1:] != self.module.shape:
            raise ValueError(
                f"Images are {arr.shape[1:]} pixels; this model was built for {self.module.shape}."
            )
        return torch.from_numpy(np.ascontiguousarray(arr))

    # ------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-3,
        validation_fraction: float = 0.1,
        fast_lr_multiplier: float = 0.5,
        tune_every: int = 3,
        tau: float = 1e-3,
        tune_lr: float = 1e-3,
        seed: int | None = 0,
        progress: bool = True,
    ) -> ConvVAE:
        """Train all members together with Adam; HBE alternates train and tune steps.

        ``validation_fraction`` of the images (a seeded random split) is held out: per-epoch
        validation NLL in :attr:`history`, and HBE's tune steps (every ``tune_every`` train
        steps: ensemble validation NLL minus ``tau`` x entropy, Adam at ``tune_lr`` on the
        bounds only, then clipping). Fast weights get ``lr * fast_lr_multiplier``.

        Parameters
        ----------
        max_epochs
            Epochs.
        batch_size
            Images per minibatch (seen by every member).
        lr
            Adam learning rate of the network.
        validation_fraction
            Held-out fraction of the images (must be above 0 for ``hyperbatch``).
        fast_lr_multiplier
            Learning-rate multiplier of the fast weights.
        tune_every, tau, tune_lr
            HBE's tune schedule, entropy weight and bounds' learning rate, as in
            :class:`~ensemblevi.train.HyperTrainingPlan`.
        seed
            Seeds the split, the data order and the training draws.
        progress
            Show a progress bar.
        """
        if not 0 <= validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
        hyper = self.module.hyper is not None
        data = torch.from_numpy(self.images)
        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        perm = torch.randperm(len(data), generator=gen)
        n_val = round(validation_fraction * len(data))
        if hyper and n_val == 0:
            raise ValueError(
                "ensemble='hyperbatch' tunes on validation images: use validation_fraction > 0."
            )
        val, train = data[perm[:n_val]], data[perm[n_val:]]
        self.train_indices, self.validation_indices = perm[n_val:].numpy(), perm[:n_val].numpy()
        module = self.module
        module.l2_scale = 1.0 / len(train)
        groups = fast_param_groups(
            module.network_parameters(),
            fast=module.fast_parameters(),
            lr=lr,
            fast_lr_multiplier=fast_lr_multiplier,
        )
        opt = torch.optim.Adam(groups, lr=lr)
        tune_opt = torch.optim.Adam(module.hyper_parameters(), lr=tune_lr) if hyper else None
        records, rows, step, val_pos = [], [], 0, 0
        # the deep loss sums members (each gets its lone gradient); the history is per member
        per_member = self.n_members if self.ensemble in ("deep", "single") else 1
        if hyper:
            records.append(bounds_record(module.hyper, step, 0, None))
        start = time.perf_counter()
        with forked_rng(seed):
            for epoch in track(
                range(max_epochs), description=f"ConvVAE {self.ensemble}", disable=not progress
            ):
                module.train()
                order = torch.randperm(len(train))
                total = 0.0
                for i in range(0, len(train), batch_size):
                    batch = train[order[i : i + batch_size]]
                    loss = module.loss(batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(batch) / per_member
                    step += 1
                    if hyper and step % tune_every == 0:
                        vb = val[val_pos : val_pos + batch_size]
                        val_pos = (val_pos + batch_size) % max(len(val), 1)
                        nll = tune_step(module, vb, tune_opt, tau)
                        records.append(bounds_record(module.hyper, step, epoch, nll))
                module.eval()
                row = {"epoch": epoch, "train_loss": total / len(train)}
                if n_val:
                    with torch.no_grad():
                        rec, kl, _, _ = module.elbo_terms(val)
                        row["validation_nll"] = float(-logmeanexp(-(rec[0] + kl), 0).mean())
                rows.append(row)
        self.train_time_ = time.perf_counter() - start
        self.history = pd.concat([self.history, pd.DataFrame(rows)], ignore_index=True)
        if hyper:
            self.hyper_trajectory_ = trajectory_frame(module.hyper, records)
        module.eval()
        self.is_trained = True
        return self

    def get_hyperparameters(self) -> pd.DataFrame:
        """Tuned intervals and means per member (``hyperbatch``), as EnsembleSCVI's."""
        hyper = self.module.hyper
        if hyper is None:
            raise ValueError(
                f"get_hyperparameters needs ensemble='hyperbatch', not {self.ensemble!r}."
            )
        return hyperparameter_table(hyper)

    # ------------------------------------------------------------- metrics
    def _batched(self, images, fn, batch_size: int = 256) -> np.ndarray:
        x = self._check(images)
        self.module.eval()
        out = [fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(out, dim=-1).numpy()

    def log_likelihood(
        self, images, n_samples: int = 100, return_members: bool = False, seed: int = 0
    ) -> np.ndarray:
        """Importance-weighted ``log p(x)`` (nats per image) of the member mixture, ``(n,)``.

        Parameters
        ----------
        images
            ``(n, h, w)`` images of the training size.
        n_samples
            Importance samples per member and image.
        return_members
            Return each member's, ``(K, n)``.
        seed
            Seeds the latent draws.
        """
        with forked_rng(seed):
            members = self._batched(
                images, lambda b: self.module.log_likelihood(b, n_samples), batch_size=64
            )
        if return_members:
            return members
        return logmeanexp(torch.from_numpy(members), 0).numpy()

    def member_probabilities(self, images, n_samples: int = 1, seed: int = 0) -> np.ndarray:
        """Members' predicted pixel means, ``(K, n, h, w)``.

        Parameters
        ----------
        images
            ``(n, h, w)`` images.
        n_samples
            Latent draws averaged per member (1: the posterior mean).
        seed
            Seeds the latent draws.
        """
        with forked_rng(seed):
            x = self._check(images)
            self.module.eval()
            parts = [
                self.module.probabilities(x[i : i + 256], n_samples) for i in range(0, len(x), 256)
            ]
        return torch.cat(parts, dim=1).numpy()

    def reconstruction_error(self, images, seed: int = 0) -> np.ndarray:
        """Mean squared error per image between the image and the ensemble's mean prediction.

        Parameters
        ----------
        images
            ``(n, h, w)`` images.
        seed
            Seeds the latent draws.
        """
        x = self._check(images).numpy()
        probs = self.member_probabilities(images, seed=seed).mean(0)
        return ((probs - x) ** 2).reshape(len(x), -1).mean(1)

    def epistemic_score(self, images, n_samples: int = 5, seed: int = 0) -> np.ndarray:
        """Per image, mean over pixels of the between-member variance of predicted pixel
        means (each member averaged over ``n_samples`` latent draws): high where members
        disagree.

        Parameters
        ----------
        images
            ``(n, h, w)`` images.
        n_samples
            Latent draws averaged per member.
        seed
            Seeds the latent draws.
        """
        probs = self.member_probabilities(images, n_samples=n_samples, seed=seed)
        return probs.var(0).reshape(probs.shape[1], -1).mean(1)

    def diversity(self, images, seed: int = 0) -> float:
        """Mean pairwise absolute difference of members' predicted pixel means.

        Parameters
        ----------
        images
            ``(n, h, w)`` images.
        seed
            Seeds the latent draws.
        """
        probs = self.member_probabilities(images, seed=seed)
        k = probs.shape[0]
        if k < 2:
            return 0.0
        pairs = [np.abs(probs[i] - probs[j]).mean() for i in range(k) for j in range(i + 1, k)]
        return float(np.mean(pairs))
