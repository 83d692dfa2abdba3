"""``ensemblevi train`` and ``ensemblevi merge``: a model (or one shard of it) in an owned
directory, checkpointed every epoch in its stage, resumable, replaced only when complete.

Errors are raised, never printed: a ``ValueError`` (bad input, exit status 2) or a
:class:`RunRefused` (the command would replace something not asked for, exit status 1).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ensemblevi._files import OutputDirectory, staged_output, write_json
from ensemblevi._fingerprint import option_changes
from ensemblevi._warnings import quiet_third_party

from ._data import Log, training_data
from ._train import RunRefused

#: scvi-tools' TrainingPlan default (``n_epochs_kl_warmup``)
KL_WARMUP_EPOCHS = 400


def parse_shard(shard: str | None, n_members: int) -> tuple[int, int]:
    """``"i/n"`` (shards numbered 1..n) to this shard's ``(offset, n_members)``.

    Members are split as evenly as possible, the first shards taking one more.

    Parameters
    ----------
    shard
        ``"I/N"``, or ``None`` for the whole ensemble.
    n_members
        Members of the whole ensemble.
    """
    if shard is None:
        return 0, n_members
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard {shard!r} is not I/N (e.g. 2/4).") from None
    if not 1 <= i <= n or n > n_members:
        raise ValueError(f"--shard {shard}: need 1 <= I <= N <= --members ({n_members}).")
    size, extra = divmod(n_members, n)
    offset = (i - 1) * size + min(i - 1, extra)
    return offset, size + (i <= extra)


def write_train_record(out: Path, spec: dict, model, **extra) -> None:
    """``OUT/train.json`` (atomically): the options, from which ``merge`` rebuilds the data.

    Parameters
    ----------
    out
        Folder of the model (a stage, committed afterwards).
    spec
        The options of the ``train`` command.
    model
        The trained model (its member range is recorded).
    **extra
        Further entries (epochs trained, resumed from).
    """
    start, stop = model.member_range
    write_json(out / "train.json", {"spec": spec, "member_range": [start, stop], **extra})


def read_train_record(folder: Path) -> dict:
    """A ``train``/``merge`` record (``train.json``); a damaged one is a clear error.

    Parameters
    ----------
    folder
        A directory written by ``train`` or ``merge``.
    """
    path = Path(folder) / "train.json"
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}); train that directory again.") from err


def kl_continuation(done: int) -> dict | None:
    """plan_kwargs that continue scvi-tools' KL warm-up (epoch / 400) after ``done`` epochs.

    A resumed training starts Lightning's epoch count at 0 again; without this its KL
    weight would restart at 0 instead of going on from ``done / 400``.

    Parameters
    ----------
    done
        Epochs trained before the resumed part.
    """
    if done <= 0:
        return None
    if done >= KL_WARMUP_EPOCHS:
        return {"min_kl_weight": 1.0, "n_epochs_kl_warmup": None}
    return {"min_kl_weight": done / KL_WARMUP_EPOCHS, "n_epochs_kl_warmup": KL_WARMUP_EPOCHS - done}


def _checkpoint_to_resume(
    target: OutputDirectory, ckpt_record: dict, epochs: int, resume: bool, force: bool, log: Log
) -> dict | None:
    """The checkpoint ``train`` continues from (``None``: start afresh in a new stage)."""
    from ensemblevi.train._callbacks import EpochCheckpoint

    out = target.path
    ckpt = EpochCheckpoint.read(target.stage / "checkpoint")
    if not resume:
        if ckpt is not None and not force:
            raise RunRefused(
                f"{out} holds the checkpoint of an interrupted training (after epoch "
                f"{ckpt['epochs_done']}, in {ckpt['folder']}); pass --resume to continue it "
                "or --force to start over."
            )
        if ckpt is not None:
            log(
                f"--force: discarding the checkpoint of an interrupted training "
                f"(after epoch {ckpt['epochs_done']})"
            )
        target.new_stage()
        return None
    if ckpt is None:
        raise ValueError(
            f"--resume: there is no checkpoint of an interrupted training in "
            f"{out}; run without --resume."
        )
    old = {"member_range": ckpt["member_range"], **ckpt["spec"]}
    new = {"member_range": ckpt_record["member_range"], **ckpt_record["spec"]}
    why = ", ".join(option_changes(old, new))
    if why:
        raise ValueError(
            f"--resume: the checkpoint in {out} was trained with other options ({why}); "
            "rerun with its options, or without --resume (with --force) to start over."
        )
    if ckpt["epochs_done"] > epochs:
        raise ValueError(
            f"--resume: the checkpoint has {ckpt['epochs_done']} epochs, more "
            f"than --epochs {epochs}; pass --epochs {ckpt['epochs_done']} or "
            "more."
        )
    return ckpt


def train_command(
    spec: dict,
    out: Path,
    shard: str | None = None,
    accelerator: str = "auto",
    devices: str = "auto",
    compile_likelihood: bool | None = None,
    force: bool = False,
    resume: bool = False,
    log: Log = print,
    on_loaded: Callable | None = None,
    *,
    trust: bool = False,
) -> str:
    """Train the model (or shard) ``spec`` describes into ``out``; returns a closing line.

    Parameters
    ----------
    spec
        The data and model options (``data``, ``preset``, ``n_cells``, ``heart_path``,
        ``layer``, ``batch_key``, ``n_top_genes``, ``ensemble``, ``members``, ``epochs``,
        ``batch_size``, ``seed``); recorded in ``train.json``.
    out
        The model's directory (new, empty or written by ``train``).
    shard
        ``"I/N"``: train only shard I of N of the members.
    accelerator, devices
        Passed to training.
    compile_likelihood
        ``torch.compile`` the likelihood (``None``: where it pays off).
    force
        Replace a model trained with other options (it stays until the new one is complete).
    resume
        Continue an interrupted training from its checkpoint.
    log
        Where progress lines go.
    on_loaded
        Called as ``on_loaded(adata, layer, title)`` once the data are loaded.
    trust
        Resume from a checkpoint in scvi-tools' pickled format (an older ensemblevi's):
        loading it unpickles it, which runs any code the file carries.
    """
    from ensemblevi._interrupt import deferred, set_resume_hint
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model._memory import check_training_memory
    from ensemblevi.train._callbacks import EpochCheckpoint

    epochs, members, batch_size = spec["epochs"], spec["members"], spec["batch_size"]
    if epochs < 1:
        raise ValueError(
            f"--epochs must be at least 1, got {epochs}: a model trained for no "
            "epoch is its random initialisation."
        )
    for name, value in (("--members", members), ("--batch-size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    offset, k = parse_shard(shard, members)
    member_range = [offset, offset + k]
    # what a checkpoint must match to be resumed (more epochs may be asked for)
    ckpt_record = {
        "spec": {k_: v for k_, v in spec.items() if k_ != "epochs"},
        "member_range": member_range,
    }
    stage = OutputDirectory(out, "train").stage  # for the error below, before any claim
    try:
        # the checkpoint of an interrupted training stays in the stage, for --resume
        with staged_output(out, "train", keep_stage=("checkpoint",)) as target:
            stage = target.stage
            finished = read_train_record(out) if "train.json" in target.files else None
            if finished is not None and not force:
                if finished["spec"] == spec and finished["member_range"] == member_range:
                    target.abandon()
                    return (
                        f"{out} already holds this model (same options); nothing to do. "
                        "Pass --force to train it again."
                    )
                raise RunRefused(
                    f"{out} holds a model trained with other options "
                    f"({', '.join(option_changes(finished['spec'], spec))}); pass --force to "
                    "replace it (it stays until the new one is complete) or choose another "
                    "--out."
                )
            ckpt = _checkpoint_to_resume(target, ckpt_record, epochs, resume, force, log)
            done = 0 if ckpt is None else int(ckpt["epochs_done"])
            kept = f"; the model already in {out} is unchanged" if finished else ""

            def saved(n: int, folder: Path) -> None:
                set_resume_hint(
                    f"kept the checkpoint after epoch {n} of {epochs} in "
                    f"{folder}{kept}; continue with the same command and "
                    "--resume"
                )

            if ckpt is None:
                set_resume_hint(
                    f"no epoch had finished, so nothing was kept{kept}; rerun "
                    "the same command to start again"
                )
            else:
                saved(done, Path(ckpt["folder"]))
            adata, title = training_data(spec)
            if on_loaded is not None:
                on_loaded(adata, "counts" if "counts" in adata.layers else None, title)
            with quiet_third_party():
                if ckpt is not None:
                    model = EnsembleSCVI.load(ckpt["folder"], adata=adata, trust=trust)
                    log(f"resuming {ckpt['folder']} after epoch {done}")
                else:
                    check_training_memory(
                        lambda n: EnsembleSCVI(
                            adata, n_members=n, ensemble=spec["ensemble"], seed=spec["seed"]
                        ),
                        k,
                        batch_size,
                        adata.n_vars,
                        accelerator,
                        also_built=members if shard else 0,
                    )
                    model = EnsembleSCVI(
                        adata,
                        n_members=k,
                        ensemble=spec["ensemble"],
                        seed=spec["seed"],
                        member_offset=offset,
                        n_members_total=members,
                    )
                span = f" (epochs {done + 1}..{epochs})" if done else ""
                log(f"training {model._model_summary_string} for {epochs - done} epochs{span}")
                checkpoint = EpochCheckpoint(
                    model,
                    target.stage / "checkpoint",
                    record=ckpt_record,
                    epochs_before=done,
                    on_save=saved,
                )
                if done < epochs:
                    model.train(
                        max_epochs=epochs - done,
                        batch_size=batch_size,
                        seed=spec["seed"],
                        callbacks=[checkpoint],
                        plan_kwargs=kl_continuation(done),
                        accelerator=accelerator,
                        devices=devices,
                        compile_likelihood=compile_likelihood,
                    )
            model.save(target.stage, overwrite=True)
            write_train_record(
                target.stage, spec, model, epochs_trained=epochs, resumed_after=done or None
            )
            with deferred():  # the checkpoint goes and the model comes in one step
                shutil.rmtree(target.stage / "checkpoint", ignore_errors=True)
                target.commit()
                set_resume_hint(f"training had finished: the model is in {out}")
    except FloatingPointError as err:
        ckpt = EpochCheckpoint.read(stage / "checkpoint")
        kept_ckpt = (
            f"The checkpoint after epoch {ckpt['epochs_done']} is kept: --resume continues "
            "from it, --force starts over."
            if ckpt
            else "No epoch had finished, so no checkpoint was kept."
        )
        raise ValueError(f"{err} {kept_ckpt}") from err
    return f"wrote {out} (members {offset}..{offset + k - 1} of {members})"


def merge_command(
    shards: Sequence[Path], out: Path, partial: bool = False, *, trust: bool = False
) -> str:
    """Merge shard directories written by ``train --shard`` into one model in ``out``.

    Parameters
    ----------
    shards
        The shard directories.
    out
        The merged model's directory (new, empty or written by ``merge``).
    partial
        Allow merging only part of the ensemble's shards.
    trust
        Also read shards in scvi-tools' pickled format (an older ensemblevi's): loading
        them unpickles them, which runs any code the files carry.

    Returns
    -------
    A closing line for the user.
    """
    from ensemblevi.model import EnsembleSCVI
    from ensemblevi.model._shards import missing_members

    records = []
    for d in shards:
        if not (d / "train.json").exists() or not (d / "model.pt").exists():
            raise ValueError(
                f"{d} is not a finished `ensemblevi train` directory (train.json "
                "and model.pt expected)."
            )
        records.append(read_train_record(d))
    spec = records[0]["spec"]
    different = [str(d) for d, r in zip(shards, records, strict=True) if r["spec"] != spec]
    if different:
        raise ValueError(
            f"{', '.join(different)} trained with other options than "
            f"{shards[0]}; only shards of one `train` command merge."
        )
    gaps = missing_members([r["member_range"] for r in records], spec["members"])
    if gaps and not partial:
        shown = ", ".join(f"{a}..{b - 1}" for a, b in gaps)
        raise ValueError(
            f"the shards given hold only part of the {spec['members']}-member "
            f"ensemble: members {shown} are missing. Give every shard directory, "
            "or pass --partial to merge only these."
        )
    with staged_output(out, "merge") as target:
        adata, _ = training_data(spec)
        with quiet_third_party():
            models = [EnsembleSCVI.load(d, adata=adata, trust=trust) for d in shards]
            merged = EnsembleSCVI.merge(models)
        merged.save(target.stage)
        write_train_record(target.stage, spec, merged, merged_from=[str(d) for d in shards])
    start, stop = merged.member_range
    return f"wrote {out} (members {start}..{stop - 1} of {spec['members']})"
