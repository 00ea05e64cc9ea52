"""InfoNCE lower bound on the mutual information of images and ROI responses (method §7.1).

A trained contrastive model embeds ``K`` evaluation pairs as ``z_x, z_y`` (in eval mode, see
:func:`embed_pairs`). With the critic ``f(i, j) = cos(z_x[i], z_y[j]) / tau``::

    I(tau) = (1/K) sum_i [ f(i, i) - log( (1/K) sum_j exp f(i, j) ) ] = log K - L_K(tau)

where ``L_K`` is the training loss (:func:`cortexcl.models.contrastive.info_nce`) over all ``K``
pairs as one batch. ``I <= log K``, so bounds are only comparable at equal ``K``; see
:func:`common_k_bound`. Values are returned in bits.

The published method also maximised the bound over a rescaled temperature on the very set it
reported, which is optimistic. Here :func:`select_temperature_on_val` picks the temperature on
validation pairs and the caller applies it to the test pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from cortexcl.errors import InputError
from cortexcl.models.contrastive import cosine_similarities, info_nce_from_similarities

BITS_PER_NAT = math.log2(math.e)
DEFAULT_BETAS = np.logspace(-2, 2, 1000)


def _similarities(z_x: Tensor | ArrayLike, z_y: Tensor | ArrayLike) -> Tensor:
    """Float64 similarity matrix ``S[i, j] = cos(z_y[i], z_x[j])``."""
    z_x = torch.as_tensor(z_x, dtype=torch.float64)
    z_y = torch.as_tensor(z_y, dtype=torch.float64, device=z_x.device)
    return cosine_similarities(z_x, z_y)


def _bits(similarities: Tensor, temperature: float) -> float:
    loss = info_nce_from_similarities(similarities, temperature).item()
    return (math.log(similarities.shape[0]) - loss) * BITS_PER_NAT


def infonce_bound(
    z_x: Tensor | ArrayLike, z_y: Tensor | ArrayLike, temperature: float = 0.3
) -> float:
    """InfoNCE lower bound, in bits, of ``K`` embedded (image, response) pairs.

    Parameters
    ----------
    z_x : Tensor or array, (K, z)
        Image embeddings.
    z_y : Tensor or array, (K, z)
        Response embeddings, paired row by row with ``z_x``.
    temperature : float
        Critic temperature ``tau``.

    Returns
    -------
    float
        ``(log K - L_K(tau)) * log2(e)``; at most ``log2 K``.
    """
    return _bits(_similarities(z_x, z_y), temperature)


def select_temperature_on_val(
    z_x: Tensor | ArrayLike,
    z_y: Tensor | ArrayLike,
    base: float = 0.3,
    betas: ArrayLike = DEFAULT_BETAS,
) -> tuple[float, float]:
    """Choose the temperature scale ``beta`` that maximises the bound on these pairs.

    Scans ``tau = base * beta`` over ``betas`` (1000 log-spaced values in ``[1e-2, 1e2]`` by
    default) and keeps the best; if none beats ``beta = 1``, returns 1. The maximum is an
    optimistic estimate on the pairs it was chosen on: pass *validation* pairs, then report
    ``infonce_bound(z_x_test, z_y_test, base * beta)`` on test. (The published protocol
    passed the reported set itself.)

    The scan runs in float32 for speed; the chosen value is re-scored in float64.

    Parameters
    ----------
    z_x, z_y : Tensor or array, (K, z)
        Validation image and response embeddings.
    base : float
        Training temperature.
    betas : array of float
        Candidate scales.

    Returns
    -------
    tuple of float
        ``(best_beta, best_bits)``, ``best_bits`` being the bound on these pairs at
        ``base * best_beta``.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0 or not np.all(betas > 0):
        raise InputError("temperature scan: betas must be a non-empty list of positive numbers")
    similarities = _similarities(z_x, z_y)
    single = similarities.float()
    scan = [_bits(single, base * beta) for beta in betas]
    candidate = float(betas[int(np.argmax(scan))])
    baseline = _bits(similarities, base)
    best = _bits(similarities, base * candidate)
    if best > baseline:
        return candidate, best
    return 1.0, baseline


def common_k_bound(
    z_x: Tensor | ArrayLike,
    z_y: Tensor | ArrayLike,
    k: int,
    n_subsets: int,
    rng: np.random.Generator,
    temperature: float = 0.3,
) -> float:
    """Mean bound over random subsets of ``k`` pairs, for comparisons at a common ``K``.

    Each subset is ``rng.choice(K, size=k, replace=False)``, drawn in turn.

    Parameters
    ----------
    z_x, z_y : Tensor or array, (K, z)
        Image and response embeddings of the ``K`` pairs.
    k : int
        Subset size, ``1 <= k <= K`` (e.g. the smallest test-set size of the study).
    n_subsets : int
        Number of subsets averaged.
    rng : numpy.random.Generator
        Source of the subsets.
    temperature : float
        Critic temperature.

    Returns
    -------
    float
        Mean bound in bits, at most ``log2 k``.
    """
    similarities = _similarities(z_x, z_y)
    n_pairs = similarities.shape[0]
    if not 1 <= k <= n_pairs:
        raise InputError(f"common K: k must be between 1 and the {n_pairs} pairs, got {k}")
    if n_subsets < 1:
        raise InputError(f"common K: n_subsets must be positive, got {n_subsets}")
    total = 0.0
    for _ in range(n_subsets):
        index = torch.as_tensor(
            rng.choice(n_pairs, size=k, replace=False), device=similarities.device
        )
        total += _bits(similarities[index][:, index], temperature)
    return total / n_subsets


def embed_pairs(
    model: nn.Module,
    image_batches: Iterable[Tensor],
    responses: Tensor | ArrayLike,
    subject: str | None = None,
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Embed evaluation pairs with a contrastive model in eval mode, without gradients.

    The model is switched to eval mode (BatchNorm running statistics, no dropout) and back to
    its previous mode afterwards.

    Parameters
    ----------
    model : nn.Module
        A :class:`~cortexcl.models.contrastive.ContrastiveModel`, or a
        :class:`~cortexcl.models.pooled.PooledContrastiveModel` with ``subject``.
    image_batches : iterable of Tensor
        Normalised image batches in pair order, e.g. ``ImageStore.batches(indices, 64)``.
    responses : Tensor or array, (K, n)
        The responses to those images, same order.
    subject : str, optional
        Subject whose response map a pooled model uses.
    batch_size : int
        Batch size for embedding the responses.

    Returns
    -------
    tuple of Tensor
        ``(z_x, z_y)``, float32 ``(K, z)`` on the CPU.
    """
    device = next(model.parameters()).device
    kwargs = {} if subject is None else {"subject": subject}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            z_x = torch.cat([model.embed_images(x.to(device)).float().cpu() for x in image_batches])
            y = torch.as_tensor(responses, dtype=torch.float32)
            if len(y) != len(z_x):
                raise ValueError(f"pairs: {len(z_x)} images but {len(y)} responses")
            z_y = torch.cat(
                [
                    model.embed_responses(chunk.to(device), **kwargs).float().cpu()
                    for chunk in y.split(batch_size)
                ]
            )
    finally:
        model.train(was_training)
    return z_x, z_y



def embed_pairs_with_modality_statistics(
    model: nn.Module,
    calibration: tuple[Iterable[Tensor], Tensor | ArrayLike],
    evaluation: tuple[Iterable[Tensor], Tensor | ArrayLike],
    subject: str | None = None,
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Embed pairs with each modality's own BatchNorm statistics in the shared head.

    In training, the head's BatchNorm layers normalise images and responses with their own
    batch statistics, but their running statistics blend the two modalities; in eval mode both
    are then normalised with that blend, which can push the bound below zero. This function
    re-estimates the head's running statistics separately for images and for responses on
    the ``calibration`` pairs (use the train part), embeds the ``evaluation`` pairs with them
    (eval mode otherwise), and restores the model.

    Parameters
    ----------
    model : nn.Module
        A contrastive model with a ``head`` and the ``embed_images`` / ``embed_responses``
        methods.
    calibration, evaluation : tuple
        ``(image_batches, responses)``: normalised image batches, and the responses to those
        images in the same order.
    subject : str, optional
        Subject whose response map a pooled model uses.
    batch_size : int
        Batch size for the responses.

    Returns
    -------
    tuple of Tensor
        ``(z_x, z_y)`` of the evaluation pairs, float32 on the CPU.
    """
    device = next(model.parameters()).device
    kwargs = {} if subject is None else {"subject": subject}
    norms = [m for m in model.head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {id(n): (n.running_mean.clone(), n.running_var.clone(), n.momentum) for n in norms}

    def embed(modality: int, data: tuple[Iterable[Tensor], Tensor | ArrayLike]) -> Tensor:
        if modality == 0:
            return torch.cat([model.embed_images(x.to(device)).float().cpu() for x in data[0]])
        y = torch.as_tensor(data[1], dtype=torch.float32)
        return torch.cat([model.embed_responses(c.to(device), **kwargs).float().cpu()
                          for c in y.split(batch_size)])

    was_training = model.training
    embeddings = []
    try:
        with torch.no_grad():
            for modality in (0, 1):
                model.eval()
                for norm in norms:
                    norm.reset_running_stats()
                    norm.momentum = None  # a cumulative average over the calibration batches
                    norm.train()
                embed(modality, calibration)
                model.eval()
                embeddings.append(embed(modality, evaluation))
    finally:
        for norm in norms:
            mean, var, momentum = saved[id(norm)]
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.momentum = momentum
        model.train(was_training)
    return embeddings[0], embeddings[1]
