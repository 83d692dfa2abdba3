"""Per-member views of an ensemble, and which scvi-tools methods work at which level.

An :class:`~ensemblevi.model.EnsembleSCVI` inherits every method of scvi-tools'
``RNASeqMixin`` and ``VAEMixin``. Each of them is in exactly one of three groups
(:func:`check_member_contract`, run by the tests, checks that the groups cover the mixins,
so a new scvi-tools method cannot slip through):

* ``OVERRIDDEN``: EnsembleSCVI implements an ensemble version (member-aware, scvi-tools'
  return types by default);
* ``VIA_MODULE``: scvi-tools' own implementation is correct for the ensemble as it is,
  because the module methods it calls (``sample``, ``_get_denoised_samples``) return the
  ensemble's predictive (the equal-weight member mixture);
* ``MEMBER_ONLY``: only meaningful per member (latent-space or parameter outputs); on the
  ensemble they are :class:`MemberOnly` attributes that return one member's result
  (``member=0`` by default, as ``get_latent_representation`` returns member 0's latent
  space) or, with ``return_members=True``, the list of every member's: scvi-tools' own
  method run on ``model.members[k]``.

``model.members[k]`` is a :class:`MemberView`: scvi-tools' own methods run with the module
switched to member ``k`` alone, so it behaves like a ``scvi.model.SCVI`` holding that
member's weights, with scvi-tools' return types.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from scvi.model.base import BaseModelClass, EmbeddingMixin, RNASeqMixin, VAEMixin

from ensemblevi._scvi_check import incompatibility_error

OVERRIDDEN = (
    "get_normalized_expression",
    "get_latent_representation",
    "get_elbo",
    "get_marginal_ll",
    "get_reconstruction_error",
    "get_latent_library_size",
    "_get_denoised_samples",
    "differential_expression",  # the ensemble posterior's population estimand (base._de_core)
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
    """A per-member scvi-tools method was asked for something only the whole ensemble has."""


class MemberOnly:
    """An ensemble attribute standing for an scvi-tools method that works per member only.

    Declared in a class body as ``get_likelihood_parameters = MemberOnly()``; the reason
    comes from :data:`MEMBER_ONLY` under the attribute's name. Called on the ensemble it
    runs scvi-tools' own method on ``model.members[member]`` (default member 0, the member
    ``get_latent_representation`` returns), or on every member with
    ``return_members=True`` (a list, member by member), so that a script written for
    ``scvi.model.SCVI`` runs and gets scvi-tools' types.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in MEMBER_ONLY:
            raise TypeError(f"{name} is not in MEMBER_ONLY; give its reason there.")
        self.name, self.why = name, MEMBER_ONLY[name]
        self.__doc__ = (
            f"Member ``member``'s ``{name}`` (scvi-tools' own on ``model.members[member]``).\n\n"
            f"Per member only: {self.why}.\n\n"
            "Parameters\n----------\n"
            "*args, **kwargs\n    scvi-tools' arguments of the method.\n"
            "member\n    The member (default 0).\n"
            "return_members\n    Return the list of every member's result instead.\n"
        )

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        bound = functools.partial(self._call, obj)
        bound.__doc__ = self.__doc__
        return bound

    def _call(
        self, model: Any, *args: Any, member: int = 0, return_members: bool = False, **kwargs: Any
    ):
        if return_members:
            return [getattr(view, self.name)(*args, **kwargs) for view in model.members]
        try:
            view = model.members[member]
        except (IndexError, TypeError) as err:
            raise MemberMethodError(
                f"EnsembleSCVI.{self.name}(member={member!r}): {err} ({self.name} works per "
                f"member: {self.why})."
            ) from None
        return getattr(view, self.name)(*args, **kwargs)


def _in_member(fn: Callable) -> Callable:
    """scvi-tools' ``fn``, run with the view's ensemble switched to the view's member."""

    @functools.wraps(fn)
    def wrapper(self: MemberView, *args, **kwargs):
        with self.model.module.member(self.member):
            return fn(self, *args, **kwargs)

    wrapper.in_member = True
    return wrapper


class MemberView(RNASeqMixin, VAEMixin):
    """Member ``k`` of an ensemble, seen as one ``scvi.model.SCVI``.

    Every ``RNASeqMixin``/``VAEMixin`` method is scvi-tools' own, run with the ensemble's
    module switched to member ``k`` alone (nothing is computed for the other members), so
    it returns exactly what scvi-tools returns for one scVI model. Anything else
    (``adata``, ``module``, ``adata_manager``, ``device``, ...) is the ensemble's.

    For ``ensemble="mcdropout"`` the members are not fixed functions: each call of a member
    view draws new dropout masks, i.e. it is one more draw of the MC-dropout posterior.

    Parameters
    ----------
    model
        The ensemble.
    member
        The member's index, ``0 <= member < model.n_members``.
    """

    # RNASeqMixin
    _get_transform_batch_gen_kwargs = _in_member(RNASeqMixin._get_transform_batch_gen_kwargs)
    get_importance_weights = _in_member(RNASeqMixin.get_importance_weights)
    get_normalized_expression = _in_member(RNASeqMixin.get_normalized_expression)
    differential_expression = _in_member(RNASeqMixin.differential_expression)
    posterior_predictive_sample = _in_member(RNASeqMixin.posterior_predictive_sample)
    _get_denoised_samples = _in_member(RNASeqMixin._get_denoised_samples)
    get_feature_correlation_matrix = _in_member(RNASeqMixin.get_feature_correlation_matrix)
    get_likelihood_parameters = _in_member(RNASeqMixin.get_likelihood_parameters)
    get_latent_library_size = _in_member(RNASeqMixin.get_latent_library_size)
    # VAEMixin
    get_elbo = _in_member(VAEMixin.get_elbo)
    get_marginal_ll = _in_member(VAEMixin.get_marginal_ll)
    get_reconstruction_error = _in_member(VAEMixin.get_reconstruction_error)
    get_latent_representation = _in_member(VAEMixin.get_latent_representation)
    get_aggregated_posterior = _in_member(VAEMixin.get_aggregated_posterior)
    differential_abundance = _in_member(VAEMixin.differential_abundance)
    # EmbeddingMixin
    get_batch_representation = _in_member(EmbeddingMixin.get_batch_representation)
    # scvi-tools' own docstring of it has no Parameters section
    get_batch_representation.__doc__ = """The member's learned batch embedding of each cell.

        scvi-tools' ``EmbeddingMixin.get_batch_representation`` on this member:
        ``(n_obs, embedding_dim)``.

        Parameters
        ----------
        adata
            AnnData registered with the model (``None``: the model's).
        indices
            Cells to return (``None``: all).
        batch_size
            Minibatch size (``None``: ``scvi.settings.batch_size``).
        """

    def __init__(self, model: BaseModelClass, member: int):
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


class Members(Sequence):
    """``model.members``: the K member views, indexable and iterable.

    Parameters
    ----------
    model
        The ensemble.
    """

    def __init__(self, model: BaseModelClass):
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


def mixin_methods() -> dict[str, Callable]:
    """Every method scvi-tools' ``RNASeqMixin`` and ``VAEMixin`` define (dunders aside)."""
    return {
        name: value
        for cls in (RNASeqMixin, VAEMixin)
        for name, value in vars(cls).items()
        if callable(value) and not name.startswith("__")
    }


def member_contract_problems(model_cls: type) -> list[str]:
    """Where ``model_cls`` and :class:`MemberView` break the three-group contract.

    Parameters
    ----------
    model_cls
        The ensemble model class (``EnsembleSCVI``).
    """
    inherited = mixin_methods()
    groups = [set(OVERRIDDEN), set(VIA_MODULE), set(MEMBER_ONLY)]
    problems = []
    unknown = set(inherited) - set.union(*groups)
    if unknown:
        problems.append(
            f"scvi-tools' mixins have methods ensemblevi does not handle: {sorted(unknown)}"
        )
    twice = {n for i, g in enumerate(groups) for h in groups[i + 1 :] for n in g & h}
    if twice:
        problems.append(f"methods in more than one group: {sorted(twice)}")
    for name, fn in inherited.items():
        if name in OVERRIDDEN and getattr(model_cls, name) is fn:
            problems.append(f"{model_cls.__name__}.{name} is scvi-tools' own, not an override")
        if name in VIA_MODULE and getattr(model_cls, name) is not fn:
            problems.append(f"{model_cls.__name__}.{name} should be scvi-tools' own")
        if name in MEMBER_ONLY and not isinstance(_class_attr(model_cls, name), MemberOnly):
            problems.append(f"{model_cls.__name__}.{name} is not declared MemberOnly()")
        view = getattr(MemberView, name, None)
        if not getattr(view, "in_member", False) or view.__wrapped__ is not fn:
            problems.append(f"MemberView.{name} does not run scvi-tools' own on one member")
    return problems


def _class_attr(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def check_member_contract(model_cls: type) -> None:
    """Raise ``ImportError`` naming the scvi-tools mixin methods the ensemble mishandles.

    Parameters
    ----------
    model_cls
        The ensemble model class (:class:`~ensemblevi.model.EnsembleSCVI`; the model layer's
        ``ensemblevi.model.check_member_contract`` defaults to it).
    """
    problems = member_contract_problems(model_cls)
    if problems:
        raise incompatibility_error(problems)
