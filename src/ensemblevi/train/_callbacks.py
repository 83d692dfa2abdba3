"""Lightning callbacks: stop on a non-finite loss with the last good weights, save per epoch,
record the tuned hyperparameters' trajectory."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from ensemblevi._files import contained, write_json
from ensemblevi.module._hyperparameters import bounds_record


class NaNGuard(Callback):
    """Stop training on a non-finite loss and put back the weights of the last good epoch.

    A snapshot of the module's ``state_dict`` is kept at the start of training and after
    every completed epoch. When a training step's loss is NaN or infinite, the snapshot is
    loaded back into the module and a ``FloatingPointError`` names the epoch, the step and
    what to try. ``good_epoch`` is the number of completed epochs in the restored weights.

    On an accelerator, reading the loss back every step would stall the device, so the
    flags stay on the device and are read every ``check_every`` steps and at the end of
    each epoch (on CPU every step is checked: reading costs nothing there).

    Parameters
    ----------
    check_every
        Steps between reads of the device-side flags (accelerators only).
    """

    def __init__(self, check_every: int = 50) -> None:
        self._state: dict[str, torch.Tensor] | None = None
        self.good_epoch = 0
        self.restored = False
        self.check_every = check_every
        self._bad: torch.Tensor | None = None  # device-side: any non-finite loss since check
        self._steps = 0

    def _snapshot(self, pl_module) -> None:
        self._state = copy.deepcopy(pl_module.module.state_dict())

    def on_train_start(self, trainer, pl_module) -> None:
        """Snapshot the initial weights.

        Parameters
        ----------
        trainer, pl_module
            Lightning's trainer and the training plan.
        """
        self._snapshot(pl_module)
        self.good_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Check pending flags; snapshot the epoch's weights.

        Parameters
        ----------
        trainer, pl_module
            Lightning's trainer and the training plan.
        """
        self._check_pending(trainer, None)
        self._snapshot(pl_module)
        self.good_epoch = trainer.current_epoch + 1

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx: int) -> None:
        """Check the step's loss (or queue its check on an accelerator).

        Parameters
        ----------
        trainer, pl_module
            Lightning's trainer and the training plan.
        outputs
            What the training step returned.
        batch, batch_idx
            The minibatch and its index.
        """
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if isinstance(loss, torch.Tensor) and loss.device.type != "cpu":
            bad = ~torch.isfinite(loss.detach())
            self._bad = bad if self._bad is None else self._bad | bad
            self._steps += 1
            if self._steps % self.check_every == 0:
                self._check_pending(trainer, batch_idx)
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            self._fail(trainer, pl_module, value, batch_idx)

    def _check_pending(self, trainer, batch_idx: int | None) -> None:
        if self._bad is not None and bool(self._bad):
            self._fail(trainer, trainer.lightning_module, float("nan"), batch_idx)
        self._bad = None

    def _fail(self, trainer, pl_module, value: float, batch_idx: int | None) -> None:
        if self._state is not None:
            pl_module.module.load_state_dict(self._state)
            self.restored = True
        where = "" if batch_idx is None else f", minibatch {batch_idx}"
        raise FloatingPointError(
            f"Training loss became {value} at epoch {trainer.current_epoch + 1} "
            f"(step {trainer.global_step}{where}). Training stopped; the model "
            f"holds the weights after epoch {self.good_epoch} (the last finite one). Try a lower "
            "learning rate (plan_kwargs={'lr': 1e-4}), gene_likelihood='nb', or check the input "
            "for extreme counts (cells with huge library sizes, genes not filtered)."
        )


class EpochCheckpoint(Callback):
    """Save the model every ``every`` epochs and at the end of training, never half a model.

    Parameters
    ----------
    model
        The model being trained (its ``save`` is used).
    path
        Folder of the checkpoint.
    every
        Epochs between checkpoints.
    record
        ``None``: the model's files in ``path`` are replaced at each checkpoint (each file
        renamed into place). A dict makes a resumable checkpoint: the model of epoch N goes
        to ``path/epoch-NNNN/`` and, once it is complete, ``path/checkpoint.json`` (the
        record plus ``epochs_done`` and the folder) points to it; only then is the previous
        epoch's folder removed. A process killed at any moment leaves a record that points
        to a complete model of the epoch it names (:meth:`read`).
    epochs_before
        Epochs the model was trained before this training (a resumed run), so that the
        recorded epochs count the whole training.
    on_save
        Called as ``on_save(epochs_done, folder)`` after each checkpoint (e.g. to say what
        an interruption would keep).
    """

    RECORD = "checkpoint.json"

    def __init__(
        self,
        model,
        path: str | os.PathLike,
        every: int = 1,
        record: dict | None = None,
        epochs_before: int = 0,
        on_save: Callable[[int, Path], None] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {every}.")
        self.model = model
        self.path = Path(path)
        self.every = every
        self.record = record
        self.epochs_before = int(epochs_before)
        self.on_save = on_save
        self.saved_epochs: list[int] = []

    @classmethod
    def read(cls, path: str | os.PathLike) -> dict | None:
        """The record of a resumable checkpoint in ``path``, ``None`` where there is none.

        Parameters
        ----------
        path
            The checkpoint folder given to the callback.

        Returns
        -------
        The record, with ``"folder"`` the absolute path of the model it points to, or
        ``None`` when there is no record or its model file is gone.

        Raises
        ------
        UnsafePathError
            The record names a folder outside ``path``.
        """
        path = Path(path)
        try:
            record = json.loads((path / cls.RECORD).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(record, dict) or not record.get("model"):
            return None
        # the record names a folder: it must lie inside the checkpoint (UnsafePathError)
        folder = contained(path, record["model"], source=str(path / cls.RECORD))
        if not (folder / "model.pt").is_file():
            return None
        return {**record, "folder": str(folder)}

    def _save(self, epoch: int) -> None:
        module = self.model.module
        was_training, was_trained = module.training, self.model.is_trained_
        done = self.epochs_before + epoch
        folder = self.path if self.record is None else self.path / f"epoch-{done:04d}"
        # a checkpoint holds usable weights (trained for `done` epochs): load() must not
        # refuse or warn about it, so it is saved as trained
        self.model.is_trained_ = True
        try:
            self.model.save(folder, overwrite=True)
        finally:
            self.model.is_trained_ = was_trained
            module.train(was_training)
        if self.record is not None:
            write_json(
                self.path / self.RECORD,
                {**self.record, "epochs_done": done, "model": folder.name},
            )
            for old in self.path.glob("epoch-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        self.saved_epochs.append(epoch)
        if self.on_save is not None:
            self.on_save(done, folder)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Save every ``every`` epochs (rank 0 only).

        Parameters
        ----------
        trainer, pl_module
            Lightning's trainer and the training plan.
        """
        epoch = trainer.current_epoch + 1
        if epoch % self.every == 0 and trainer.is_global_zero:  # one writer under DDP
            self._save(epoch)

    def on_train_end(self, trainer, pl_module) -> None:
        """Save the final model unless its epoch was just saved.

        Parameters
        ----------
        trainer, pl_module
            Lightning's trainer and the training plan.
        """
        epoch = trainer.current_epoch
        if not trainer.is_global_zero:
            return
        if not self.saved_epochs or self.saved_epochs[-1] != epoch:
            self._save(epoch)


class HyperparameterTrajectory(Callback):
    """Record Hyper-BatchEnsemble's bounds: at the start, and after every tune step.

    Reads what :class:`~ensemblevi.train.HyperTrainingPlan` returns from a training step
    that ran a tune step (``"tune_nll"``); :attr:`records` holds
    :func:`~ensemblevi.module._hyperparameters.bounds_record` points (train steps done,
    epoch, bounds, the tune step's NLL), which the model turns into its
    ``hyper_trajectory_`` table. On a multi-process run the replicas' bounds are
    identical, so every process records the same trajectory.
    """

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        """Record the initial bounds (a first training only).

        Parameters
        ----------
        trainer, pl_module
            Lightning's trainer and the training plan.
        """
        if not self.records:
            self.records.append(
                bounds_record(pl_module.module.hyper, 0, trainer.current_epoch, None)
            )

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx: int) -> None:
        """Record the bounds after a step that tuned them.

        Parameters
        ----------
        trainer, pl_module
            Lightning's trainer and the training plan.
        outputs
            What the training step returned.
        batch, batch_idx
            The minibatch and its index.
        """
        if isinstance(outputs, dict) and "tune_nll" in outputs:
            self.records.append(
                bounds_record(
                    pl_module.module.hyper,
                    pl_module.train_steps,
                    trainer.current_epoch,
                    outputs["tune_nll"],
                )
            )
