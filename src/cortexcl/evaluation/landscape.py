"""The model landscape: Bhattacharyya geometry of classifier outputs (docs/method.md §6).

Every model u is represented by its probe-test probabilities P_u (N × C, the same images in the
same order for all models). Distances follow Mao et al. 2024 (PNAS):

    d_B(u, v)      = −(1/N) Σ_n log Σ_c sqrt(P_u[n, c] · P_v[n, c])
    d_B(u, oracle) = −(1/(2N)) Σ_n log P_u[n, y_n]        (oracle = one-hot true labels)

and the embedding is InPCA (Quinn et al. 2019, PNAS): double-centre d_B itself,
W = −½ L D L with L = I − 11ᵀ/m, W = U Λ Uᵀ, components ordered by |λ|, coordinates
x_{u,k} = U_{uk} sqrt(|λ_k|); λ_k < 0 marks a time-like component and its sign is kept.
The share of Σλ² captured by the first k components is Σ_{i≤k} λ_i² / Σ_i λ_i². Mao et al.
report a similar share as "explained stress"; their exact formula was not checked here, so
cortexcl does not use that name.

The alternative embedding, `mds`, runs metric, non-metric (SMACOF, scikit-learn) or classical
MDS on sqrt(d_B) as a precomputed dissimilarity. Every `Embedding` records its variant.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from sklearn.manifold import MDS

from cortexcl.errors import InputError

ORACLE = "oracle"
MDS_KINDS = ("metric", "nonmetric", "classical")


def _clipped(probabilities: np.ndarray, eps: float) -> np.ndarray:
    """Probabilities clipped at ``eps`` and renormalised per row (float64)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, None)
    return p / p.sum(axis=1, keepdims=True)


def _check_probabilities(probabilities: Mapping[str, np.ndarray]) -> tuple[int, int]:
    if len(probabilities) < 1:
        raise InputError("bhattacharyya_distances: no models given")
    shapes = {name: np.shape(p) for name, p in probabilities.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise InputError(f"bhattacharyya_distances: every model needs the same (N, C) "
                         f"probabilities, got {shapes}")
    if ORACLE in probabilities:
        raise InputError(f"bhattacharyya_distances: {ORACLE!r} is reserved for the labels")
    n_images, n_classes = next(iter(shapes.values()))
    return n_images, n_classes


def bhattacharyya_distances(
    probabilities: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    eps: float = 1e-12,
    block_rows: int | None = None,
) -> pd.DataFrame:
    """Pairwise Bhattacharyya distances between models' predictive distributions.

    Probabilities are clipped at ``eps`` and renormalised per row, so every Bhattacharyya
    coefficient is at most 1 and every distance non-negative. Rows are processed in blocks:
    sqrt(P) of all models for ``block_rows`` images is formed once and the per-image
    coefficients of all pairs come from one batched matrix product (``torch.bmm``, float64),
    so memory stays at m · block_rows · C values whatever N (the inputs may be memory maps).

    Parameters
    ----------
    probabilities : mapping of str to numpy.ndarray
        Model name → (N, C) probabilities, the same images and classes for every model.
    labels : numpy.ndarray, optional
        (N,) true class index of every image (a column index of the probabilities). When
        given, an ``"oracle"`` row and column are added: d_B(u, oracle) =
        −(1/(2N)) Σ_n log P_u[n, y_n].
    eps : float
        Lower clip of the probabilities.
    block_rows : int, optional
        Images per block; default so that a block holds about 2**24 values (128 MiB).

    Returns
    -------
    pandas.DataFrame
        (m × m), or (m + 1) × (m + 1) with the oracle last; symmetric with a zero diagonal,
        indexed by model name on both axes.
    """
    n_images, n_classes = _check_probabilities(probabilities)
    names = list(probabilities)
    block_rows = block_rows or max(1, 2**24 // (len(names) * n_classes))
    arrays = [probabilities[name] for name in names]
    total = np.zeros((len(names), len(names)))
    oracle = np.zeros(len(names))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n_images,) or labels.min() < 0 or labels.max() >= n_classes:
            raise InputError(f"bhattacharyya_distances: labels must be {n_images} class "
                             f"indices in [0, {n_classes})")
    for start in range(0, n_images, block_rows):
        stop = min(start + block_rows, n_images)
        roots = np.stack([np.sqrt(_clipped(p[start:stop], eps)) for p in arrays], axis=1)
        batch = torch.from_numpy(roots)
        coefficients = torch.bmm(batch, batch.transpose(1, 2)).numpy()  # (block, m, m)
        total += np.log(np.clip(coefficients, None, 1.0)).sum(axis=0)
        if labels is not None:
            rows = np.arange(stop - start)
            oracle += np.log(roots[rows, :, labels[start:stop]]).sum(axis=0)
    distances = -total / n_images
    if labels is not None:
        column = -oracle / n_images  # log sqrt(P) = ½ log P
        distances = np.block([[distances, column[:, None]], [column[None, :], np.zeros((1, 1))]])
        names.append(ORACLE)
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0.0)
    return pd.DataFrame(distances, index=names, columns=names)


@dataclass(frozen=True)
class Embedding:
    """Low-dimensional coordinates of models.

    Attributes
    ----------
    names : tuple of str
        Model of each row.
    coords : numpy.ndarray
        (m, k) coordinates.
    eigenvalues : numpy.ndarray
        (k,) signed eigenvalue of each shown component (NaN for SMACOF MDS).
    explained : numpy.ndarray
        (k,) share of Σλ² (over all eigenvalues) of each shown component (NaN for SMACOF).
    variant : str
        How the embedding was made, e.g. ``"InPCA of d_B"``.
    stress : float
        Stress-1 of the shown coordinates (MDS only, see `mds`; NaN for InPCA, whose
        target is not a distance).
    """

    names: tuple[str, ...]
    coords: np.ndarray
    eigenvalues: np.ndarray
    explained: np.ndarray
    variant: str
    stress: float = float("nan")

    @property
    def captured(self) -> float:
        """Share of Σλ² captured by the shown components (NaN for SMACOF MDS)."""
        return float(np.sum(self.explained))

    def frame(self) -> pd.DataFrame:
        """Coordinates as a table indexed by model, columns ``c1 … ck``."""
        columns = [f"c{i + 1}" for i in range(self.coords.shape[1])]
        return pd.DataFrame(self.coords, index=list(self.names), columns=columns)


def _as_matrix(distances: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    if isinstance(distances, pd.DataFrame):
        matrix, names = distances.to_numpy(dtype=np.float64), tuple(map(str, distances.index))
    else:
        matrix = np.asarray(distances, dtype=np.float64)
        names = tuple(str(i) for i in range(len(matrix)))
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise InputError(f"embedding: need a square distance matrix of at least 2 models, "
                         f"got shape {matrix.shape}")
    if not np.allclose(matrix, matrix.T, rtol=1e-9, atol=1e-12) or not np.isfinite(matrix).all():
        raise InputError("embedding: the distance matrix is not finite and symmetric")
    return matrix, names


def _double_centred_spectrum(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ordered by |λ| descending) and eigenvectors of W = −½ L D L."""
    m = len(matrix)
    centring = np.eye(m) - np.full((m, m), 1.0 / m)
    w = -0.5 * centring @ matrix @ centring
    values, vectors = np.linalg.eigh((w + w.T) / 2)
    order = np.argsort(-np.abs(values), kind="stable")
    return values[order], vectors[:, order]


def _orient(vectors: np.ndarray) -> np.ndarray:
    """Fix each eigenvector's sign: its largest-magnitude entry is positive (reproducible plots)."""
    rows = np.argmax(np.abs(vectors), axis=0)
    return vectors * np.sign(vectors[rows, np.arange(vectors.shape[1])])


def inpca(distances: pd.DataFrame | np.ndarray, n_components: int = 2) -> Embedding:
    """Intensive PCA (InPCA) of a Bhattacharyya distance matrix.

    W = −½ L D L on d_B itself (not d_B²), eigen-decomposed; components ordered by |λ|;
    x_{u,k} = U_{uk} · sqrt(|λ_k|); the sign of λ_k is kept in ``eigenvalues`` (negative =
    time-like: squared distances along it count negatively, d = Σ_k sign(λ_k)(x_uk − x_vk)²).
    ``explained`` holds λ_k² / Σ_i λ_i² ("share of Σλ² captured"; Mao et al.'s "explained
    stress" may differ and the name is not used).

    Parameters
    ----------
    distances : pandas.DataFrame or numpy.ndarray
        Symmetric (m × m) d_B, e.g. from `bhattacharyya_distances`.
    n_components : int
        Components to keep (at most m).
    """
    matrix, names = _as_matrix(distances)
    n_components = min(int(n_components), len(matrix))
    values, vectors = _double_centred_spectrum(matrix)
    total = float(np.sum(values**2))
    kept, basis = values[:n_components], _orient(vectors[:, :n_components])
    explained = kept**2 / total if total > 0 else np.zeros_like(kept)
    return Embedding(names, basis * np.sqrt(np.abs(kept)), kept, explained, "InPCA of d_B")


def kruskal_stress(coords: np.ndarray, dissimilarities: np.ndarray) -> float:
    """Kruskal's stress-1: sqrt(Σ (‖x_i − x_j‖ − δ_ij)² / Σ δ_ij²) over pairs i < j."""
    upper = np.triu_indices(len(coords), k=1)
    embedded = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)[upper]
    target = np.asarray(dissimilarities)[upper]
    denominator = float(np.sum(target**2))
    return float(np.sqrt(np.sum((embedded - target) ** 2) / denominator)) if denominator else 0.0


def _smacof(
    dissimilarities: np.ndarray, n_components: int, metric: bool, seed: int
) -> tuple[np.ndarray, float]:
    """scikit-learn SMACOF of precomputed dissimilarities: coordinates and ``stress_``."""
    parameters = inspect.signature(MDS).parameters
    options: dict[str, object] = {"n_components": n_components, "random_state": seed,
                                  "n_init": 4, "max_iter": 1000, "normalized_stress": not metric}
    if "metric_mds" in parameters:  # scikit-learn >= 1.8
        options.update(metric_mds=metric, metric="precomputed", init="random")
    else:
        options.update(metric=metric, dissimilarity="precomputed")
    model = MDS(**options)
    coords = model.fit_transform(dissimilarities)
    return coords, float(model.stress_)


def mds(
    distances: pd.DataFrame | np.ndarray,
    *,
    kind: Literal["metric", "nonmetric", "classical"] = "metric",
    n_components: int = 2,
    seed: int = 0,
) -> Embedding:
    """MDS of sqrt(d_B) as a precomputed dissimilarity (the alternative to `inpca`).

    Parameters
    ----------
    distances : pandas.DataFrame or numpy.ndarray
        Symmetric (m × m) d_B (non-negative).
    kind : {"metric", "nonmetric", "classical"}
        ``metric`` / ``nonmetric``: scikit-learn SMACOF (4 random starts drawn from ``seed``,
        the best kept); ``classical``: Torgerson MDS, the largest positive eigenvalues of
        −½ L sqrt(d_B)² L = InPCA's W with time-like components dropped; its ``explained``
        holds λ_k² / Σλ² over all eigenvalues, as InPCA's.
    n_components : int
    seed : int
        Seed of the SMACOF starts.

    Returns
    -------
    Embedding
        ``stress``: Kruskal stress-1 of the coordinates against sqrt(d_B) (metric, classical),
        or scikit-learn's stress-1 against the fitted disparities (nonmetric).
    """
    if kind not in MDS_KINDS:
        raise InputError(f"mds: unknown kind {kind!r} (expected {', '.join(MDS_KINDS)})")
    matrix, names = _as_matrix(distances)
    if (matrix < -1e-12).any():
        raise InputError("mds: distances must be non-negative to take their square root")
    dissimilarities = np.sqrt(np.clip(matrix, 0.0, None))
    n_components = min(int(n_components), len(matrix))
    if kind == "classical":
        values, vectors = _double_centred_spectrum(matrix)
        positive = np.flatnonzero(values > 0)
        order = positive[np.argsort(-values[positive], kind="stable")][:n_components]
        kept = values[order]
        coords = _orient(vectors[:, order]) * np.sqrt(kept)
        total = float(np.sum(values**2))
        explained = kept**2 / total if total > 0 else np.zeros_like(kept)
        stress = kruskal_stress(coords, dissimilarities)
    else:
        coords, stress = _smacof(dissimilarities, n_components, kind == "metric", seed)
        if kind == "metric":
            stress = kruskal_stress(coords, dissimilarities)
        kept = explained = np.full(n_components, np.nan)
    variant = f"{kind} MDS of sqrt(d_B)" + (f" (seed {seed})" if kind != "classical" else "")
    return Embedding(names, coords, kept, explained, variant, stress)


def embed(distances: pd.DataFrame | np.ndarray, variant: str = "inpca",
          seed: int = 0) -> Embedding:
    """The landscape embedding of a study: ``inpca``, ``mds-metric`` or ``mds-classical``."""
    if variant == "inpca":
        return inpca(distances)
    return mds(distances, kind=variant.removeprefix("mds-"), seed=seed)
