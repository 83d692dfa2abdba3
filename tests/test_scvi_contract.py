"""Every public method and parameter of ``scvi.model.SCVI`` is EnsembleSCVI's, or refused.

For each public method of ``scvi.model.SCVI`` (``__init__`` and the classmethods included)
and each of its parameters, EnsembleSCVI either accepts the parameter by name (a
catch-all ``**kwargs`` of scvi-tools' by a catch-all of its own), or
``ensemblevi.model.base._refused.REFUSED`` lists it, and then calling with it raises an
error containing the listed reason. Methods defined per member only
(``ensemblevi.model._members.MEMBER_ONLY``) pass every argument to scvi-tools' own method
on one member (tests/test_members.py checks them), and ``train``, ``save`` and ``load``
pass their ``**kwargs`` to scvi-tools' own (``FORWARDED``).
"""

import inspect
import warnings

import numpy as np
import pytest
import scvi
from scvi.model import SCVI

from ensemblevi.model import EnsembleSCVI
from ensemblevi.model._members import MemberOnly
from ensemblevi.model.base._refused import REFUSED

#: Methods whose ``**kwargs`` go to scvi-tools' own implementation of the same method
#: (``super().train(**kwargs)`` etc.), so every scvi-tools parameter of it is accepted.
FORWARDED = {"train", "save", "load"}

#: Gaps: ``(method, parameter)`` of ``scvi.model.SCVI`` EnsembleSCVI neither accepts nor
#: refuses with a reason (``parameter=None``: a whole method). Empty, and the test keeps it
#: so: a new scvi-tools release adding a parameter fails here by name.
KNOWN_GAPS: set[tuple[str, str | None]] = set()

#: Values for the required parameters of a method called with a refused parameter.
REQUIRED_VALUES = {
    "adata": lambda ctx: ctx["adata"],
    "dir_path": lambda ctx: ctx["saved"],
    "reference_model": lambda ctx: ctx["model"],
    "mdata": lambda ctx: ctx["adata"],
}


class _Sentinel:
    """A value no parameter has by default, so a refusal cannot mistake it for one."""


def _param_key(p: inspect.Parameter) -> str:
    if p.kind is p.VAR_KEYWORD:
        return f"**{p.name}"
    if p.kind is p.VAR_POSITIONAL:
        return f"*{p.name}"
    return p.name


def scvi_methods() -> dict[str, inspect.Signature]:
    """``scvi.model.SCVI``'s public methods (and ``__init__``) and their signatures."""
    out = {}
    for name in ["__init__", *sorted(n for n in dir(SCVI) if not n.startswith("_"))]:
        attr = inspect.getattr_static(SCVI, name)
        if isinstance(attr, property) or not callable(getattr(SCVI, name)):
            continue
        out[name] = inspect.signature(getattr(SCVI, name))
    return out


def contract() -> tuple[set, set]:
    """Today's gaps, and the ``(method, parameter)`` pairs covered by :data:`REFUSED`."""
    gaps, refused = set(), set()
    for name, sig in scvi_methods().items():
        if not hasattr(EnsembleSCVI, name):
            gaps.add((name, None))
            continue
        if isinstance(inspect.getattr_static(EnsembleSCVI, name), MemberOnly):
            continue
        forwards = name in FORWARDED
        ours = inspect.signature(getattr(EnsembleSCVI, name)).parameters.values()
        kinds = {p.kind for p in ours if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        named = {p.name for p in ours if p.kind not in kinds}
        for p in sig.parameters.values():
            if p.name in ("self", "cls"):
                continue
            key = (name, _param_key(p))
            if key in REFUSED:
                refused.add(key)
            elif p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                if p.kind not in kinds:
                    gaps.add(key)
            elif p.name not in named and not (forwards and inspect.Parameter.VAR_KEYWORD in kinds):
                gaps.add(key)
    return gaps, refused


def test_every_scvi_parameter_is_accepted_refused_or_a_known_gap():
    gaps, _ = contract()
    new = sorted(gaps - KNOWN_GAPS, key=str)
    closed = sorted(KNOWN_GAPS - gaps, key=str)
    msg = []
    if new:
        msg.append(
            "EnsembleSCVI lacks these (method, parameter) of scvi.model.SCVI (None: the whole "
            f"method); accept them by name or list them in REFUSED with the reason: {new}"
        )
    if closed:
        msg.append(f"these gaps are closed: remove them from KNOWN_GAPS: {closed}")
    assert not msg, "\n".join(msg)


def test_refused_entries_are_scvi_parameters():
    _, covered = contract()
    stale = sorted(set(REFUSED) - covered, key=str)
    assert not stale, f"REFUSED lists what scvi.model.SCVI or EnsembleSCVI lacks: {stale}"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    warnings.simplefilter("ignore")
    adata = scvi.data.synthetic_iid(batch_size=30, n_genes=20)
    EnsembleSCVI.setup_anndata(adata, batch_key="batch")
    model = EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, enable_progress_bar=False)
    saved = tmp_path_factory.mktemp("contract") / "model"
    model.save(saved)
    return {"adata": adata, "model": model, "saved": saved}


@pytest.mark.parametrize(("method", "param"), sorted(REFUSED))
def test_refused_parameters_raise_with_the_documented_reason(ctx, method, param):
    static = inspect.getattr_static(EnsembleSCVI, method)
    owner = EnsembleSCVI if isinstance(static, (classmethod, staticmethod)) else ctx["model"]
    fn = getattr(owner, method)
    args = {}
    for p in inspect.signature(fn).parameters.values():
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            if p.name not in REQUIRED_VALUES:
                pytest.fail(f"give REQUIRED_VALUES a value for {method}'s parameter {p.name}")
            args[p.name] = REQUIRED_VALUES[p.name](ctx)
    if param.startswith("**"):
        args["not_a_named_parameter"] = _Sentinel()
    elif param.startswith("*"):
        pytest.fail(f"calling {method} with refused {param} is not implemented by this test")
    else:
        args[param] = _Sentinel()
    with pytest.raises(Exception) as info:  # the reason's text is what is checked
        fn(**args)
    assert REFUSED[(method, param)] in str(info.value)


def test_forwarded_parameters_reach_scvi_tools(ctx, tmp_path):
    """``train``/``save``/``load`` take scvi-tools' own parameters through ``**kwargs``."""
    adata = ctx["adata"]
    model = EnsembleSCVI(adata, n_members=2, n_hidden=8, n_latent=2)
    model.train(
        max_epochs=2,
        train_size=0.8,
        validation_size=0.2,
        shuffle_set_split=False,
        early_stopping=True,
        early_stopping_monitor="elbo_validation",
        enable_progress_bar=False,
        accelerator="cpu",
        devices=1,
    )
    assert "elbo_validation" in model.history
    # shuffle_set_split=False: scvi-tools' split takes 20% of the cells as one contiguous run
    val = np.sort(model.validation_indices)
    assert len(val) == 12 and np.array_equal(val, np.arange(val[0], val[0] + 12))
    model.save(tmp_path / "m", save_kwargs={"pickle_protocol": 4})
    loaded = EnsembleSCVI.load(tmp_path / "m", adata=adata, accelerator="cpu")
    assert loaded.device.type == "cpu"
    with pytest.raises(TypeError):
        model.train(max_epochs=1, not_a_trainer_argument=1)


def test_load_names_a_legacy_save_and_its_conversion(tmp_path):
    (tmp_path / "model_params.pt").write_bytes(b"")  # what scvi-tools < 0.15 saved
    with pytest.raises(ValueError, match="convert_legacy_save"):
        EnsembleSCVI.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="No saved model"):
        EnsembleSCVI.load(tmp_path / "elsewhere")
