"""The hyperparameters Hyper-BatchEnsemble tunes in a VAE, and their defaults.

Only continuous hyperparameters that enter the training loss can be tuned this way
(``../shared/docs/ensembles.md`` section 4): the encoder's dropout rate, the KL weight
``beta`` and an L2 strength per layer group. Latent size, depth, width and the likelihood
family cannot.

Defaults (ranges as in the HBE paper's MLP experiments and the reference's L2 scale):

============  ===============  ===============================================
name          range            initial interval (log scale +- 0.2 around)
============  ===============  ===============================================
dropout       [0.001, 0.9]     0.1 (scVI's encoder dropout)
kl_weight     [0.1, 10]        1 (the ELBO)
l2_encoder    [0.1, 100]       14.5, the mean of the log-uniform over the range
l2_latent     [0.1, 100]       14.5
l2_decoder    [0.1, 100]       14.5
l2_heads      [0.1, 100]       14.5
============  ===============  ===============================================

The L2 strengths are on the reference's scale: the penalty
``lambda * ||W + W' diag(e1(lambda))||^2`` is divided by the number of training cells.
Groups: ``encoder`` = the encoder's hidden layers, ``latent`` = the heads of q(z|x) (and
q(l|x)), ``decoder`` = the decoder's hidden layers, ``heads`` = the decoder's expression
and zero-inflation heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensemblevi.nn import Hyperparameter

L2_GROUPS = ("encoder", "latent", "decoder", "heads")  # EnsembleVAE._l2_groups' keys
DEFAULT_HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("dropout", 1e-3, 0.9, init=0.1),
    Hyperparameter("kl_weight", 0.1, 10.0, init=1.0),
    *(Hyperparameter(f"l2_{group}", 0.1, 100.0) for group in L2_GROUPS),
)
TUNABLE = tuple(h.name for h in DEFAULT_HYPERPARAMETERS)

HyperparameterSpec = (
    Sequence[str | Hyperparameter | Mapping] | Mapping[str, Mapping | Sequence[float]] | None
)


def resolve_hyperparameters(spec: HyperparameterSpec = None) -> tuple[Hyperparameter, ...]:
    """Hyperparameters to tune from a user's specification.

    ``None``: all defaults. A list of names takes those defaults; a list may also hold
    :class:`~ensemblevi.nn.Hyperparameter` objects or dicts of their fields. A mapping
    ``{name: {"low": .., "high": .., "init": ..}}`` or ``{name: (low, high[, init])}``
    overrides the named defaults' fields.
    """
    defaults = {h.name: h for h in DEFAULT_HYPERPARAMETERS}
    if spec is None:
        return DEFAULT_HYPERPARAMETERS
    if isinstance(spec, Mapping):
        items = []
        for name, value in spec.items():
            fields = (
                dict(value)
                if isinstance(value, Mapping)
                else dict(zip(("low", "high", "init"), value, strict=False))
            )
            items.append({"name": name, **fields})
        spec = items
    out = []
    for item in spec:
        if isinstance(item, Hyperparameter):
            h = item
        elif isinstance(item, str):
            if item not in defaults:
                raise ValueError(f"Cannot tune {item!r}: tunable hyperparameters are {TUNABLE}.")
            h = defaults[item]
        elif isinstance(item, Mapping):
            name = item.get("name")
            if name not in defaults:
                raise ValueError(f"Cannot tune {name!r}: tunable hyperparameters are {TUNABLE}.")
            base = defaults[name]
            fields = {"low": base.low, "high": base.high, "init": base.init,
                      "init_width": base.init_width, **item}  # fmt: skip
            if "init" not in item and ("low" in item or "high" in item):
                fields["init"] = None  # the new range's log-uniform mean
            h = Hyperparameter(**fields)
        else:
            raise TypeError(f"Cannot read a hyperparameter from {item!r}.")
        if h.name not in defaults:
            raise ValueError(f"Cannot tune {h.name!r}: tunable hyperparameters are {TUNABLE}.")
        if h.name == "dropout" and h.high >= 1:
            raise ValueError("The dropout range must stay below 1.")
        out.append(h)
    if not out:
        raise ValueError("Tune at least one hyperparameter.")
    if len({h.name for h in out}) != len(out):
        raise ValueError(f"Hyperparameters listed twice: {[h.name for h in out]}.")
    return tuple(out)
