"""Copy the weights of one ``scvi.module.VAE`` into one member of a deep EnsembleVAE.

The two hold the same numbers in different layouts: scVI's ``nn.Linear`` weights are
``(d_out, d_in)`` per layer, ours ``(K, d_in, d_out)`` with the encoder's mean/variance
heads (and the decoder's scale/zero-inflation heads) fused into one matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from ._ensemble_vae import EnsembleVAE


def _fc_pairs(dst: nn.Module, src: dict[str, torch.Tensor], prefix: str, k: int):
    """(destination tensor slice, source tensor) pairs of an FCLayers stack."""
    for i, layer in enumerate(dst.layers):
        base = f"{prefix}.fc_layers.Layer {i}"
        yield layer["linear"].weight[k], src[f"{base}.0.weight"].T
        yield layer["linear"].bias[k], src[f"{base}.0.bias"]
        if f"{base}.1.running_mean" in src:
            bn = layer["bn"]
            for name in ("weight", "bias", "running_mean", "running_var"):
                yield getattr(bn, name)[k], src[f"{base}.1.{name}"]


def _heads(dst: nn.Module, k: int, *parts: tuple[torch.Tensor, torch.Tensor]):
    yield dst.weight[k], torch.cat([w for w, _ in parts], dim=0).T
    yield dst.bias[k], torch.cat([b for _, b in parts], dim=0)


def _embedding_pairs(module: EnsembleVAE, src: dict[str, torch.Tensor], k: int):
    """Member ``k``'s embedding tables and scVI's (``batch_representation="embedding"``)."""
    theirs = {key.split(".")[1] for key in src if key.startswith("_embeddings_dict.")}
    ours = set(module.embeddings_dict) if hasattr(module, "_embeddings_dict") else set()
    if theirs != ours:
        raise ValueError(
            f"The scVI model has embeddings {sorted(theirs)}, the ensemble {sorted(ours)}: "
            "build the ensemble with the scVI model's batch_representation."
        )
    for key in sorted(ours):
        yield module.get_embedding(key).weight[k], src[f"_embeddings_dict.{key}.weight"]


@torch.no_grad()
def load_scvi_member(module: EnsembleVAE, member: int, vae: nn.Module) -> None:
    """Put the weights of ``vae`` (a ``scvi.module.VAE``) into member ``member`` of ``module``.

    Parameters
    ----------
    module
        A ``deep`` (or ``single``) ensemble with the same architecture as ``vae`` (genes,
        covariates, hidden units, layers, latent size, dispersion, library size handling);
        a mismatch raises a ``ValueError`` naming the tensor. Options without weights
        (likelihood, latent distribution, variance activation, size factors) must match
        too; they are checked by name.
    member
        The member to overwrite.
    vae
        The trained ``scvi.module.VAE``.
    """
    if module.ensemble not in ("deep", "single"):
        raise ValueError(
            f"scVI weights fit only a deep ensemble's members, not {module.ensemble!r}."
        )
    if not 0 <= member < module.n_members:
        raise IndexError(f"member {member} out of range: the ensemble has {module.n_members}.")
    options = {
        "gene_likelihood": str,
        "latent_distribution": str,
        "dispersion": str,
        "use_size_factor_key": bool,  # scvi-tools stores the key itself
    }
    differ = [
        f"{name}: scVI {as_(getattr(vae, name))!r}, member {as_(getattr(module, name))!r}"
        for name, as_ in options.items()
        if hasattr(vae, name) and as_(getattr(vae, name)) != as_(getattr(module, name))
    ]
    if differ:
        raise ValueError(
            "The scVI model and the ensemble differ in options that have no weights ("
            + "; ".join(differ)
            + "): build the ensemble with the scVI model's options."
        )
    src = vae.state_dict()
    k = member
    pairs = list(_fc_pairs(module.z_encoder.encoder, src, "z_encoder.encoder", k))
    pairs += _heads(
        module.z_encoder.heads,
        k,
        (src["z_encoder.mean_encoder.weight"], src["z_encoder.mean_encoder.bias"]),
        (src["z_encoder.var_encoder.weight"], src["z_encoder.var_encoder.bias"]),
    )
    if module.l_encoder is not None:
        pairs += _fc_pairs(module.l_encoder.encoder, src, "l_encoder.encoder", k)
        pairs += _heads(
            module.l_encoder.heads,
            k,
            (src["l_encoder.mean_encoder.weight"], src["l_encoder.mean_encoder.bias"]),
            (src["l_encoder.var_encoder.weight"], src["l_encoder.var_encoder.bias"]),
        )
        pairs += [
            (module.library_log_means, src["library_log_means"]),
            (module.library_log_vars, src["library_log_vars"]),
        ]
    pairs += _fc_pairs(module.decoder.px_decoder, src, "decoder.px_decoder", k)
    heads = [
        (src["decoder.px_scale_decoder.0.weight"], src["decoder.px_scale_decoder.0.bias"]),
        (src["decoder.px_dropout_decoder.weight"], src["decoder.px_dropout_decoder.bias"]),
    ]
    if module.dispersion == "gene-cell":  # the decoder's third head
        heads.append((src["decoder.px_r_decoder.weight"], src["decoder.px_r_decoder.bias"]))
    pairs += _heads(module.decoder.heads, k, *heads)
    if module.px_r is not None:
        pairs.append((module.px_r[k], src["px_r"]))
    pairs += _embedding_pairs(module, src, k)
    for dst, value in pairs:
        if dst.shape != value.shape:
            raise ValueError(
                f"scVI tensor of shape {tuple(value.shape)} does not fit the member's "
                f"{tuple(dst.shape)}: the architectures differ (genes, covariates, n_hidden, "
                "n_layers, n_latent, dispersion or library size handling)."
            )
        dst.copy_(value)


@torch.no_grad()
def load_scanvi_member(module: nn.Module, member: int, scanvae: nn.Module) -> None:
    """Put the weights of ``scanvae`` (an ``scvi.module.SCANVAE``) into member ``member``.

    The VAE part goes through :func:`load_scvi_member`; the classifier, ``q(z2 | z1, y)``
    and ``p(z1 | z2, y)`` are copied here (scvi-tools' separate mean/variance heads into
    the fused ones).

    Parameters
    ----------
    module
        A ``deep`` (or ``single``) :class:`~ensemblevi.module.EnsembleSCANVAE` with the
        architecture of ``scanvae``.
    member
        The member to overwrite.
    scanvae
        The trained ``scvi.module.SCANVAE``.
    """
    if getattr(scanvae, "use_labels_groups", False):
        raise ValueError("scANVI models with labels groups are not supported.")
    load_scvi_member(module, member, scanvae)
    src, k = scanvae.state_dict(), member
    seq = [key for key in src if key.startswith("classifier.classifier.")]
    n_linear = max(int(key.split(".")[2]) for key in seq)
    pairs = []
    if module.classifier_layers is not None:
        pairs += _fc_pairs(module.classifier_layers, src, "classifier.classifier.0", k)
    pairs += [
        (module.classifier_head.weight[k], src[f"classifier.classifier.{n_linear}.weight"].T),
        (module.classifier_head.bias[k], src[f"classifier.classifier.{n_linear}.bias"]),
    ]
    pairs += _fc_pairs(module.encoder_z2_z1.encoder, src, "encoder_z2_z1.encoder", k)
    pairs += _heads(
        module.encoder_z2_z1.heads,
        k,
        (src["encoder_z2_z1.mean_encoder.weight"], src["encoder_z2_z1.mean_encoder.bias"]),
        (src["encoder_z2_z1.var_encoder.weight"], src["encoder_z2_z1.var_encoder.bias"]),
    )
    pairs += _fc_pairs(module.decoder_z1_z2, src, "decoder_z1_z2.decoder", k)
    pairs += _heads(
        module.decoder_z1_z2_heads,
        k,
        (src["decoder_z1_z2.mean_decoder.weight"], src["decoder_z1_z2.mean_decoder.bias"]),
        (src["decoder_z1_z2.var_decoder.weight"], src["decoder_z1_z2.var_decoder.bias"]),
    )
    pairs.append((module.y_prior, src["y_prior"]))
    for dst, value in pairs:
        if dst.shape != value.shape:
            raise ValueError(
                f"scANVI tensor of shape {tuple(value.shape)} does not fit the member's "
                f"{tuple(dst.shape)}: the architectures differ."
            )
        dst.copy_(value)
