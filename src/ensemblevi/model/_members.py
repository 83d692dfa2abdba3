"""Per-member views of an ensemble, and which scvi-tools methods work at which level.

An :class:`~ensemblevi.model.EnsembleSCVI` inherits every method of scvi-tools'
``RNASeqMixin`` and ``VAEMixin``. Each of them is in exactly one of three groups (a test
checks that the groups cover the mixins, so a new scvi-tools method cannot slip through):

* ``OVERRIDDEN``: EnsembleSCVI implements an ensemble version (member-aware, scvi-tools'
  return types by default);
* ``VIA_MODULE``: scvi-tools' own implementation is correct for the ensemble as it is,
  because the module methods it calls (``sample``, ``_get_denoised_samples``) return the
  ensemble's predictive (the equal-weight member mixture);
* ``MEMBER_ONLY``: only meaningful per member (latent-space or parameter outputs); on the
  ensemble they raise :class:`MemberMethodError` naming ``model.members[k].<method>``.

``model.members[k]`` is a :class:`MemberView`: scvi-tools' own methods run with the module
switched to member ``k`` alone, so it behaves like a ``scvi.model.SCVI`` holding that
member's weights, with scvi-tools' return types.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from scvi.model.base import RNASeqMixin, VAEMixin

if TYPE_CHECKING:
    from ._ensemble_scvi import EnsembleSCVI

OVERRIDDEN = (
    "get_normalized_expression",
    "get_latent_representation",
    "get_elbo",
    "get_marginal_ll",
    "get_reconstruction_error",
    "get_latent_library_size",
    "_get_denoised_samples",
    "differential_expression",  # the ensemble posterior's population estimand (tl._de)
)
VIA_MODULE = (
    "posterior_predictive_sample",
    "get_feature_correlation_matrix",
    "_get_transform_batch_gen_kwargs",
)
MEMBER_ONLY = {
    "get_likelihood_parameters": "the ensemble's predictive is a mixture of the members' "
    "count distributions, which has no single set of parameters",
    "get_aggregated_posterior": "members' latent spaces are not aligned with each other",
    "differential_abundance": "it works in one member's latent space; members' latent "
    "spaces are not aligned with each other",
    "get_importance_weights": "importance weights refer to one member's posterior",
}


class MemberMethodError(TypeError):
    """An scvi-tools method that is defined per member was called on the whole ensemble."""


def member_only(name: str, why: str):
    """An EnsembleSCVI method that refuses and says what to call instead."""

    def method(self, *args: Any, **kwargs: Any):
        raise MemberMethodError(
            f"EnsembleSCVI.{name} works per member: {why}. Call "
            f"model.members[k].{name}(...) for member k (k = 0..{self.n_members - 1}), which "
            "behaves like scvi.model.SCVI."
        )

    method.__name__ = name
    method.__doc__ = (
        f"Not available on the whole ensemble ({why}); use ``model.members[k].{name}``."
    )
    return method


def _in_member(fn):
    @functools.wraps(fn)
    def wrapper(self: MemberView, *args, **kwargs):
        with self.model.module.member(self.member):
            return fn(self, *args, **kwargs)

    return wrapper


class MemberView(RNASeqMixin, VAEMixin):
    """Member ``k`` of an ensemble, seen as one ``scvi.model.SCVI``.

    Every ``RNASeqMixin``/``VAEMixin`` method is scvi-tools' own, run with the ensemble's
    module switched to member ``k`` alone (nothing is computed for the other members), so
    it returns exactly what scvi-tools returns for one scVI model. Anything else
    (``adata``, ``module``, ``adata_manager``, ``device``, ...) is the ensemble's.

    For ``ensemble="mcdropout"`` the members are not fixed functions: each call of a member
    view draws new dropout masks, i.e. it is one more draw of the MC-dropout posterior.
    """

    def __init__(self, model: EnsembleSCVI, member: int):
        self.model = model
        self.member = member

    def __getattr__(self, name: str):
        if name == "model":  # not yet set (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return (
            f"member {self.member} of {self.model.n_members} of an EnsembleSCVI "
            f"({self.model.ensemble}), scvi-tools API"
        )


for _cls in (RNASeqMixin, VAEMixin):
    for _name, _value in vars(_cls).items():
        if callable(_value) and not _name.startswith("__"):
            setattr(MemberView, _name, _in_member(_value))


class Members(Sequence):
    """``model.members``: the K member views, indexable and iterable."""

    def __init__(self, model: EnsembleSCVI):
        self._model = model

    def __len__(self) -> int:
        return self._model.n_members

    def __getitem__(self, k: int) -> MemberView:  # type: ignore[override]
        n = len(self)
        if not isinstance(k, int):
            raise TypeError(f"members are indexed by an int, got {type(k).__name__}.")
        if not -n <= k < n:
            raise IndexError(f"member {k} out of range: the ensemble has {n}.")
        return MemberView(self._model, k % n)

    def __iter__(self) -> Iterator[MemberView]:
        return (self[k] for k in range(len(self)))
