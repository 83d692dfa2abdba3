"""``check_member_contract`` for the model layer's :class:`EnsembleSCVI` (the default class).

The member views and the three-group contract live in :mod:`ensemblevi.model.base._members`
(``model.base`` never imports the model layer); the names are re-exported here for code that
imported them from ``ensemblevi.model._members``.
"""

from __future__ import annotations

from .base import _members
from .base._members import (  # noqa: F401  (re-exported)
    MEMBER_ONLY,
    OVERRIDDEN,
    VIA_MODULE,
    MemberMethodError,
    MemberOnly,
    Members,
    MemberView,
    member_contract_problems,
)


def check_member_contract(model_cls: type | None = None) -> None:
    """Raise ``ImportError`` naming the scvi-tools mixin methods the ensemble mishandles.

    Parameters
    ----------
    model_cls
        The ensemble model class (default: :class:`~ensemblevi.model.EnsembleSCVI`).
    """
    if model_cls is None:
        from ._ensemble_scvi import EnsembleSCVI as model_cls
    _members.check_member_contract(model_cls)
