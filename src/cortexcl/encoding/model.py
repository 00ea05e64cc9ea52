"""Voxel-wise encoding model: PCA + ridge per layer, α per voxel, layer per ROI (method §3).

How it computes (exact, and equal to scikit-learn's ``PCA(svd_solver="full")`` followed by
``Ridge(alpha)`` on the PCA scores up to float32 rounding; the tests check both):

* Layers are processed one at a time. A layer's selection rows (train, val; never test) are
  read once with plain file reads (float16 files are not memory-mapped, so their pages do not
  stay resident) and kept as stored (float16 or float32); they are centred on the mean of the
  split's training rows (and scaled to unit variance with ``standardize``) block by block in
  float32 while the Gram or covariance matrix is accumulated.
* PCA is the eigendecomposition of the smaller of the Gram matrix ``X Xᵀ`` (when the layer
  has more features than images, as the convolutional layers do) and the covariance
  ``Xᵀ X``. One Gram matrix per layer serves every fit (train for selection, each fold of the
  published protocol, train ∪ val for the refit): a fit's own centring is applied to the Gram
  matrix exactly (kernel centring). Eigenvectors get a deterministic sign (largest entry
  positive, as scikit-learn's ``svd_flip``).
* PCA scores are orthogonal, so ridge regression on them is diagonal: for every α the
  prediction is ``P diag(1 / (λ + α)) Fᵀ (Y − ȳ) + ȳ`` with the factors F, P of the
  decomposition. One product ``Fᵀ Y`` serves the whole α grid, and the final model uses a
  different α per voxel at no extra cost. This is the solution of ``himalaya.ridge.Ridge``
  (and scikit-learn's ``Ridge``) on the PCA scores, which the tests check; calling himalaya
  itself would repeat the SVD and ``Xᵀ Y`` for each α, and its per-voxel-α solver builds a
  (voxels × components × images) array. The same linear algebra runs on the GPU when one is
  present (float32, no TF32).
* Test rows are read only after the layer and the α of every voxel are chosen.
"""

from __future__ import annotations

import hashlib
import math
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from cortexcl.data.splits import Split, check_split
from cortexcl.errors import InputError
from cortexcl.models.backbones import CANDIDATE_LAYERS, resolve_device

ALPHAS = np.logspace(-1, 7, 9)  # the published absolute grid
RELATIVE_ALPHAS = np.logspace(-4, 4, 9)  # × the mean PCA eigenvalue of each fit
ALPHA_SCALES = ("relative", "absolute")
LAYER_BOOTSTRAPS = 200  # resamples of the val images for the stability of the layer choice
REFITS = ("train+val", "train")

_BLOCK_BYTES = 64 << 20  # bytes of features read at a time
_GRAM_BLOCKS = 8  # row blocks of the CPU Gram product (only the upper triangle is computed)
_SMALL_EIGH = 2048  # eigenproblems below this size use one BLAS thread


# ----------------------------------------------------------------------------- reading rows


def _file_layout(array: np.ndarray) -> tuple[str, int] | None:
    """(file name, byte offset) when ``array`` is a whole C-ordered ``.npy`` memory map."""
    if not isinstance(array, np.memmap) or not array.filename or not array.flags.c_contiguous:
        return None
    try:
        size = os.path.getsize(array.filename)
    except OSError:
        return None
    return (array.filename, int(array.offset)) if array.offset + array.nbytes == size else None


def _storage_dtype(array: np.ndarray) -> np.dtype:
    """float16 features are read as float16 (half the bytes); anything else as float32."""
    return np.dtype(np.float16) if array.dtype == np.float16 else np.dtype(np.float32)


def iter_columns(
    array: np.ndarray, rows: np.ndarray, width: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(columns, array[rows][:, columns])`` for consecutive blocks of ``width`` columns.

    Blocks are float16 for float16 features, else float32. A whole-file ``.npy`` memory map is
    read with ``preadv`` row segment by row segment rather than through the map, so that the
    file's pages never count towards the process's resident memory; any other array is
    indexed directly.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_columns = array.shape[1]
    dtype = _storage_dtype(array)
    layout = _file_layout(array)
    if layout is None:
        for start in range(0, n_columns, width):
            columns = slice(start, min(start + width, n_columns))
            yield columns, np.asarray(array[rows, columns], dtype=dtype)
        return
    filename, offset = layout
    item = array.dtype.itemsize
    in_file_order = np.argsort(rows, kind="stable")
    with open(filename, "rb", buffering=0) as handle:
        for start in range(0, n_columns, width):
            columns = slice(start, min(start + width, n_columns))
            block = np.empty((rows.size, columns.stop - start), dtype=array.dtype)
            for i in in_file_order:
                where = offset + (int(rows[i]) * n_columns + start) * item
                if os.preadv(handle.fileno(), [block[i]], where) != block[i].nbytes:
                    raise InputError(f"{filename}: file is shorter than its header says")
            yield columns, block.astype(dtype, copy=False)


@dataclass
class _Centring:
    """Per-feature centre and scale of one layer, fit on the split's training rows."""

    mean: torch.Tensor
    inv_scale: torch.Tensor | None

    def apply(self, block: np.ndarray, columns: slice, layer: str) -> torch.Tensor:
        """A centred (and scaled) float32 copy of ``block`` (columns ``columns`` of ``layer``)."""
        return self.centre_(_float32(block, layer), columns)

    def centre_(self, block: torch.Tensor, columns: slice) -> torch.Tensor:
        """Centre (and scale) a float32 block in place."""
        block -= self.mean[columns]
        if self.inv_scale is not None:
            block *= self.inv_scale[columns]
        return block


def _float32(block: np.ndarray, layer: str) -> torch.Tensor:
    """A float32 tensor copy of a feature block (torch converts float16 fast), checked finite."""
    out = torch.from_numpy(block).to(torch.float32, copy=True)
    if not torch.isfinite(out).all():
        raise InputError(f"features {layer}: non-finite values")
    return out


def _column_width(n_rows: int) -> int:
    return max(1, _BLOCK_BYTES // (4 * max(1, n_rows)))


def _fit_blocks(
    array: np.ndarray, rows: np.ndarray, n_ref: int, centring: _Centring, layer: str
) -> Iterator[torch.Tensor]:
    """Centred float32 column blocks of ``array[rows]``, fitting ``centring`` on the way.

    The centre (and, when ``centring`` scales, the scale) of each feature is a
    ``StandardScaler`` fit on the first ``n_ref`` rows; ``centring`` is complete once the last
    block is out.
    """
    standardize = centring.inv_scale is not None
    for columns, block in iter_columns(array, rows, _column_width(rows.size)):
        block = _float32(block, layer)
        scaler = StandardScaler(with_std=standardize).fit(block[:n_ref].numpy())
        centring.mean[columns] = torch.from_numpy(scaler.mean_.astype(np.float32))
        if standardize:
            centring.inv_scale[columns] = torch.from_numpy((1 / scaler.scale_).astype(np.float32))
        yield centring.centre_(block, columns)


# ----------------------------------------------------------------------------- PCA


def _gram_step(n: int) -> int:
    return max(256, math.ceil(n / _GRAM_BLOCKS))


def _add_gram(gram: torch.Tensor, x: torch.Tensor) -> None:
    """``gram += x xᵀ``; on the CPU only the upper-triangle blocks (see `_symmetrize`)."""
    if x.is_cuda:
        gram.addmm_(x, x.T)
        return
    step = _gram_step(x.shape[0])
    for i in range(0, x.shape[0], step):
        for j in range(i, x.shape[0], step):
            gram[i : i + step, j : j + step].addmm_(x[i : i + step], x[j : j + step].T)


def _symmetrize(gram: torch.Tensor) -> torch.Tensor:
    """Fill the lower-triangle blocks that `_add_gram` skipped on the CPU."""
    if not gram.is_cuda:
        n, step = gram.shape[0], _gram_step(gram.shape[0])
        for i in range(0, n, step):
            for j in range(i + step, n, step):
                gram[j : j + step, i : i + step] = gram[i : i + step, j : j + step].T
    return gram


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``x xᵀ`` of a float32 matrix."""
    gram = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float32, device=x.device)
    _add_gram(gram, x)
    return _symmetrize(gram)


def _top_eigh(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``k`` eigenpairs of a symmetric matrix, descending, eigenvalues clipped at 0.

    Each eigenvector's largest-magnitude entry is made positive.
    """
    n = matrix.shape[0]
    if matrix.is_cuda:
        values, vectors = torch.linalg.eigh(matrix)
        values, vectors = values[n - k :], vectors[:, n - k :]
    else:
        # LAPACK's subset solver (only k eigenvectors) is faster than torch's full one. Small
        # problems run single-threaded: BLAS threads only contend with torch's idle workers.
        with threadpool_limits(1 if n < _SMALL_EIGH else None, user_api="blas"):
            subset = {"subset_by_index": [n - k, n - 1], "driver": "evr"} if k < n else {}
            values, vectors = scipy.linalg.eigh(matrix.numpy(), overwrite_a=True,
                                                check_finite=False, **subset)
        values, vectors = torch.from_numpy(values), torch.from_numpy(vectors)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    peak = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[peak, torch.arange(k, device=vectors.device)])
    signs[signs == 0] = 1
    return values, vectors * signs


@dataclass
class _Basis:
    """PCA of one fit: ridge factors F (fit rows) and P (other rows), eigenvalues λ = s².

    Gram form: F = U, P = K_of U (scores: U s and P / s); covariance form: F and P are the
    scores themselves. Either way the ridge prediction is ``P diag(1/(λ+α)) Fᵀ Y``.
    """

    fit_factor: torch.Tensor
    other_factor: torch.Tensor
    eigenvalues: torch.Tensor
    gram: bool

    @property
    def n_components(self) -> int:
        return int(self.eigenvalues.numel())

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PCA scores (projections) of the fit rows and of the other rows."""
        if not self.gram:
            return self.fit_factor, self.other_factor
        s = self.eigenvalues.sqrt()
        inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
        return self.fit_factor * s, self.other_factor * inv


def _recentre_(k_ff: torch.Tensor, k_of: torch.Tensor) -> None:
    """Centre Gram blocks on the fit rows' own mean, in place (exact kernel centring)."""
    a_f = k_ff.mean(dim=1, dtype=torch.float64)
    a_o = k_of.mean(dim=1, dtype=torch.float64)
    c = a_f.mean().item()
    a_f, a_o = a_f.to(k_ff.dtype), a_o.to(k_ff.dtype)
    k_ff.sub_(a_f[:, None]).sub_(a_f[None, :]).add_(c)
    k_of.sub_(a_o[:, None]).sub_(a_f[None, :]).add_(c)


def _gram_basis(k_ff: torch.Tensor, k_of: torch.Tensor, n_components: int) -> _Basis:
    """PCA from Gram blocks of the fit rows and of other rows × fit rows (both overwritten)."""
    _recentre_(k_ff, k_of)
    values, vectors = _top_eigh(k_ff, min(n_components, k_ff.shape[0]))
    return _Basis(vectors, k_of @ vectors, values, gram=True)


def _covariance_basis(x_fit: torch.Tensor, x_other: torch.Tensor, n_components: int) -> _Basis:
    mean = x_fit.mean(dim=0, dtype=torch.float64).to(x_fit.dtype)
    x_fit, x_other = x_fit - mean, x_other - mean
    k = min(n_components, x_fit.shape[0], x_fit.shape[1])
    values, vectors = _top_eigh(x_fit.T @ x_fit, k)
    return _Basis(x_fit @ vectors, x_other @ vectors, values, gram=False)


def pca_scores(
    x_fit: np.ndarray, x_other: np.ndarray, n_components: int, device: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact PCA fit on ``x_fit``: scores of ``x_fit`` and ``x_other``, explained variances.

    Uses the eigendecomposition of the Gram matrix when there are more features than rows,
    else of the covariance matrix (float32). Equal to scikit-learn's
    ``PCA(n_components, svd_solver="full")`` up to the sign of each component.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n_fit, k)`` and ``(n_other, k)`` float32 scores, ``(k,)`` explained variance, with
        ``k = min(n_components, n_fit, n_features)``.
    """
    device = resolve_device(device)
    x_fit = torch.as_tensor(np.asarray(x_fit, np.float32), device=device)
    x_other = torch.as_tensor(np.asarray(x_other, np.float32), device=device)
    if x_fit.shape[1] > x_fit.shape[0]:
        mean = x_fit.mean(dim=0, dtype=torch.float64).float()
        x_fit, x_other = x_fit - mean, x_other - mean
        basis = _gram_basis(_gram(x_fit), x_other @ x_fit.T, n_components)
    else:
        basis = _covariance_basis(x_fit, x_other, n_components)
    z_fit, z_other = basis.scores()
    variance = basis.eigenvalues / max(1, x_fit.shape[0] - 1)
    return z_fit.cpu().numpy(), z_other.cpu().numpy(), variance.cpu().numpy()


# ----------------------------------------------------------------------------- ridge


def _ridge_coefficients(basis: _Basis, y_fit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Fᵀ (Y − ȳ)`` and ``ȳ``: what every α shares."""
    mean = y_fit.mean(dim=0)
    factor = basis.fit_factor
    return factor.T @ y_fit - factor.sum(dim=0)[:, None] * mean[None, :], mean


def _ridge_predict(
    basis: _Basis, shared: torch.Tensor, alpha: float | torch.Tensor
) -> torch.Tensor:
    """Ridge predictions without the intercept ȳ, for a scalar α or one α per voxel."""
    shrink = (1.0 / (basis.eigenvalues[:, None] + alpha)).to(shared.dtype)
    if shrink.shape[1] == 1:  # one α: shrink the small factor
        return (basis.other_factor * shrink[:, 0]) @ shared
    return basis.other_factor @ (shared * shrink)


def _standardized_columns(y: torch.Tensor) -> torch.Tensor:
    """Columns centred and scaled to unit norm in float64 (zero for constant columns)."""
    varies = y.amax(dim=0) > y.amin(dim=0)
    y = y.double()
    y -= y.mean(dim=0)
    norm = y.norm(dim=0)
    return y.mul_(torch.where(varies & (norm > 0), 1 / norm, torch.zeros_like(norm)))


def _correlations(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Pearson r per column in float64, as :func:`cortexcl.metrics.pearson_r`.

    ``target`` comes from `_standardized_columns`; a prediction column that is exactly zero
    (the fit rows of that voxel were constant) scores 0.
    """
    prediction = prediction.double()
    prediction -= prediction.mean(dim=0)
    norm = prediction.norm(dim=0)
    r = (target * prediction).sum(dim=0)
    return torch.where(norm > 0, r / norm, torch.zeros_like(r)).clamp(-1, 1)


# ----------------------------------------------------------------------------- the model


def _take_rows(tensor: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
    """``tensor[positions]``: a view when the positions are a contiguous run, else a copy."""
    if positions.size and np.array_equal(positions, np.arange(positions[0],
                                                              positions[0] + positions.size)):
        return tensor[int(positions[0]) : int(positions[0]) + positions.size]
    return tensor.index_select(0, torch.from_numpy(positions).to(tensor.device))


def _ordered_layers(layers: Sequence[str]) -> list[str]:
    """Candidate layers in method §3.1 order first (ties go to the earlier), then the others."""
    rank = {name: i for i, name in enumerate(CANDIDATE_LAYERS)}
    return sorted(layers, key=lambda name: (rank.get(name, len(rank)), list(layers).index(name)))


@dataclass
class _Fit:
    """Fit rows and evaluation rows, as positions in the loaded row set."""

    fit: np.ndarray
    other: np.ndarray


@dataclass
class _LayerEntry:
    features: weakref.ref
    selection: list[_Basis]
    centring: _Centring
    final: dict[str, _Basis] = field(default_factory=dict)


class PCACache:
    """PCA decompositions shared by encoding models fit on the same features and split.

    The PCA of a layer depends on the features and the split, not on the responses, so every
    ROI (and hemisphere) of a subject can reuse it: pass one cache to each `EncodingModel`
    and only the first fit computes each layer's decompositions; later fits only solve the
    ridge regressions. Results are identical with and without a cache. An entry is used only
    for the very array object it was computed from (held by weak reference), with the same
    split, ``n_components`` and ``standardize``.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, _LayerEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (frees the memory of the decompositions)."""
        self._entries.clear()

    def _get(self, key: tuple, array: np.ndarray) -> _LayerEntry | None:
        entry = self._entries.get(key)
        return entry if entry is not None and entry.features() is array else None

    def _put(self, key: tuple, entry: _LayerEntry) -> None:
        self._entries[key] = entry


def _selection_rows(split: Split, n_images: int) -> tuple[np.ndarray, np.ndarray, list[_Fit]]:
    """Rows read during selection and the fits on them, as positions in those rows.

    The training part comes first (its statistics centre and scale the features), then the
    validation rows; never the test rows.
    """
    loaded = np.concatenate([split.train, split.val])
    position = np.full(n_images, -1, dtype=np.int64)
    position[loaded] = np.arange(loaded.size)
    if split.protocol == "clean":
        fits = [_Fit(position[split.train], position[split.val])]
    else:
        fits = [_Fit(position[tr], position[va]) for tr, va in split.folds]
    return loaded, position, fits


def _split_key(split: Split) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (split.train, split.val, split.test, *(i for f in split.folds for i in f)):
        digest.update(np.int64(part.size).tobytes())
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return digest.hexdigest()


class EncodingModel:
    """PCA + ridge encoding model with per-voxel α and per-ROI layer selection.

    Parameters
    ----------
    n_components : int
        PCA components per layer (fewer when a fit has fewer rows or the layer fewer features).
    alphas : array_like, optional
        Ridge penalty grid (positive); default `RELATIVE_ALPHAS` (10⁻⁴ … 10⁴) with
        ``alpha_scale="relative"``, the published `ALPHAS` (10⁻¹ … 10⁷) with ``"absolute"``.
    refit : {"train+val", "train"}
        Clean protocol: after selection, refit PCA and ridge on train ∪ val (default) or keep
        the train fit, and score the test rows.
    standardize : bool
        Scale every feature to unit variance over the split's training rows before PCA
        (``StandardScaler`` fit on train; docs/method.md §9 item 9).
    progress : bool
        Show a progress bar over layers.
    device : str, optional
        Where the linear algebra runs; default the GPU when present.
    cache : PCACache, optional
        Share PCA decompositions with other models fit on the same features and split (e.g.
        one per ROI); see `PCACache`.
    alpha_scale : {"relative", "absolute"}
        ``relative`` (scale-free): each α of the grid is multiplied by the mean eigenvalue of
        the fit's PCA (the mean variance of its components, times the number of fit rows), so
        one grid fits every layer and backbone whatever the size of its activations;
        ``absolute``: the grid is used as it is (the published setting).
    random_state : int
        Seed of the bootstrap over val images that measures the stability of the layer choice.

    Attributes
    ----------
    best_layer_ : str
        Layer with the best mean selection score (ties: the earlier in docs/method.md §3.1).
    alphas_ : numpy.ndarray of shape (n_voxels,)
        Chosen α per voxel at the best layer, on the grid's scale (relative or absolute).
    absolute_alphas_ : numpy.ndarray of shape (n_voxels,)
        The α each voxel's final ridge fit used (relative α × the final fit's mean eigenvalue).
    alpha_edges_ : dict
        ``{"low": n, "high": n}``: voxels whose α is the smallest / largest of the grid (a
        share near 1 means the grid should be wider).
    layer_margin_ : float
        Selection score of the best layer minus that of the second best (NaN for one layer).
    layer_stability_ : float
        Share of `LAYER_BOOTSTRAPS` resamples of the val images (with replacement) in which the
        best layer still scores highest; NaN under the paper protocol and for a single layer.
    val_r_ : numpy.ndarray of shape (n_voxels,)
        Selection score of each voxel at (best layer, its α): validation r (clean) or the
        fold-averaged cross-validation r (paper, the published reported score).
    test_r_ : numpy.ndarray of shape (n_voxels,)
        Pearson r on the test rows of the final fit.
    predictions_ : numpy.ndarray of shape (n_test, n_voxels)
        Test predictions, rows in ``split.test`` order.
    layer_scores_ : pandas.DataFrame
        ``layer, mean_val_r, median_val_r, n_components, selected, stability`` per layer
        (stability: share of val bootstraps the layer wins).
    n_components_ : int
        Components of the final fit.
    """

    def __init__(
        self,
        n_components: int = 1000,
        alphas: Sequence[float] | np.ndarray | None = None,
        refit: str = "train+val",
        standardize: bool = False,
        progress: bool = True,
        device: str | None = None,
        cache: PCACache | None = None,
        alpha_scale: str = "relative",
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.alphas = alphas
        self.refit = refit
        self.standardize = standardize
        self.progress = progress
        self.device = device
        self.cache = cache
        self.alpha_scale = alpha_scale
        self.random_state = random_state

    # -- validation ---------------------------------------------------------------------

    def _check(self, features: Mapping[str, np.ndarray], responses: np.ndarray,
               split: Split) -> np.ndarray:
        if int(self.n_components) != self.n_components or self.n_components < 1:
            raise InputError(f"n_components must be a positive integer, got {self.n_components}")
        if self.refit not in REFITS:
            raise InputError(f"refit must be one of {', '.join(REFITS)}, got {self.refit!r}")
        if self.alpha_scale not in ALPHA_SCALES:
            raise InputError(f"alpha_scale must be one of {', '.join(ALPHA_SCALES)}, got "
                             f"{self.alpha_scale!r}")
        grid = self.alphas
        if grid is None:
            grid = RELATIVE_ALPHAS if self.alpha_scale == "relative" else ALPHAS
        alphas = np.asarray(grid, dtype=np.float64).reshape(-1)
        if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
            raise InputError(f"alphas must be positive finite numbers, got {self.alphas}")
        if not features:
            raise InputError("features: no layers given")
        if responses.ndim != 2 or responses.shape[1] == 0:
            raise InputError(f"responses must be (n_images, n_voxels), got {responses.shape}")
        n_images = responses.shape[0]
        for layer, array in features.items():
            if array.ndim != 2:
                raise InputError(f"features {layer}: expected an (n_images, n_features) array, "
                                 f"found shape {array.shape}")
            if array.shape[0] != n_images:
                raise InputError(f"features and responses disagree on the number of images: "
                                 f"features {layer} has {array.shape[0]} rows, responses "
                                 f"{n_images} (one row per image in both)")
        parts = [split.train, split.val, split.test, *(i for fold in split.folds for i in fold)]
        check_split(split)
        if any(part.size and (part.min() < 0 or part.max() >= n_images) for part in parts):
            raise InputError(f"split: image indices outside 0..{n_images - 1}")
        used = np.unique(np.concatenate([p.astype(np.int64) for p in parts]))
        bad = np.zeros(responses.shape[1], dtype=bool)
        for rows in np.array_split(used, max(1, used.size // 1024)):  # bounded copies
            bad |= ~np.isfinite(responses[rows]).all(axis=0)
        if bad.any():
            raise InputError(f"responses: {int(bad.sum())} voxels have NaN or infinite values "
                             "in images the split uses (train, val or test); remove those "
                             "voxels or images")
        train = set(split.train.tolist())
        if any(not set(np.concatenate(fold).tolist()) <= train for fold in split.folds):
            raise InputError("split: cross-validation folds must lie inside the train part")
        return alphas

    # -- fitting ------------------------------------------------------------------------

    def fit(self, features: Mapping[str, np.ndarray], responses: np.ndarray,
            split: Split) -> EncodingModel:
        """Choose α per voxel and the layer on validation data, then score the test rows.

        Parameters
        ----------
        features : mapping of str to numpy.ndarray
            ``{layer: (n_images, n_features)}`` activations of every image (float32 arrays
            or float16 memory maps, as `extract_features` returns).
        responses : numpy.ndarray of shape (n_images, n_voxels)
            Measured responses, rows aligned with the features.
        split : Split
            ``clean``: PCA and ridge fit on train, selection on val, final fit on train ∪ val
            (or train, see ``refit``), scored on test. ``paper``: selection P-B, scores
            averaged over ``split.folds`` (PCA fit per fold), then a fit on ``split.train``
            scored on test.

        Returns
        -------
        EncodingModel
            ``self``, fitted.
        """
        if not isinstance(responses, np.ndarray):
            responses = np.asarray(responses)
        alphas = self._check(features, responses, split)
        device = resolve_device(self.device)
        layers = _ordered_layers(list(features))

        loaded, position, fits = _selection_rows(split, responses.shape[0])
        y_loaded = self._responses(responses, loaded, device)
        rows, scores, kept = [], [], None
        # Bootstrap resamples of the val images (clean protocol): counts per val image.
        boot, boot_scores = None, []
        if split.protocol == "clean" and len(layers) > 1:  # a single layer is no choice
            rng = np.random.default_rng(self.random_state)
            draws = rng.integers(0, split.val.size, size=(LAYER_BOOTSTRAPS, split.val.size))
            boot = torch.from_numpy(np.stack([np.bincount(d, minlength=split.val.size)
                                              for d in draws]).astype(np.float64))
        bar = tqdm(layers, desc="encoding layers", unit="layer", disable=not self.progress)
        for layer in bar:
            bar.set_postfix_str(layer)
            entry, matrix = self._layer_entry(features[layer], layer, split, loaded, fits,
                                              device)
            r_alpha = self._selection_scores(entry.selection, fits, y_loaded, alphas)
            r_alpha = r_alpha.cpu().numpy()
            best = np.argmax(r_alpha, axis=0)  # first maximum: the smaller α on a tie
            r_star = r_alpha[best, np.arange(r_alpha.shape[1])]
            score = float(r_star.mean())
            rows.append({"layer": layer, "mean_val_r": score,
                         "median_val_r": float(np.median(r_star)),
                         "n_components": entry.selection[0].n_components})
            if boot is not None:
                boot_scores.append(self._bootstrap_scores(entry.selection[0], fits[0],
                                                          y_loaded, alphas, best, boot))
            if not scores or score > max(scores):
                kept = (layer, entry, matrix, best, r_star)
            scores.append(score)
            del matrix, entry
        bar.close()

        layer, entry, gram_matrix, best, r_star = kept
        self.best_layer_ = layer
        self.alphas_ = alphas[best]
        self.alpha_edges_ = {"low": int(np.sum(best == 0)),
                             "high": int(np.sum(best == alphas.size - 1))}
        self.val_r_ = r_star
        self.layer_scores_ = pd.DataFrame(rows)
        self.layer_scores_["selected"] = self.layer_scores_["layer"] == layer
        ranked = sorted(scores, reverse=True)
        self.layer_margin_ = ranked[0] - ranked[1] if len(ranked) > 1 else float("nan")
        if boot_scores:
            winners = np.argmax(np.stack(boot_scores), axis=0)  # first layer wins a tie
            shares = np.bincount(winners, minlength=len(layers)) / winners.size
            self.layer_scores_["stability"] = shares
            self.layer_stability_ = float(shares[layers.index(layer)])
        else:
            self.layer_scores_["stability"] = np.nan
            self.layer_stability_ = float("nan")
        if self.refit not in entry.final:
            entry.final[self.refit] = self._final_basis(
                features[layer], split, loaded, position, entry.centring, gram_matrix, device)
        fit = position[self._final_fit_rows(split, loaded)]
        self._score_test(entry.final[self.refit], responses, split, fit, y_loaded, device)
        return self

    def select_shared(self, features: Mapping[str, np.ndarray], responses: np.ndarray,
                      split: Split) -> tuple[str, float]:
        """The published shared selection P-A: one layer and one α for a whole ROI.

        On each fit (the val part, or each cross-validation fold of the paper protocol) and
        layer, the α with the best ROI-mean r; the layer whose best ROI-mean r, averaged over
        the fits, is highest (a tie goes to the earlier layer); the α chosen on most fits at
        that layer (a tie goes to the smaller α). docs/method.md §3.3. Computed on the
        untuned backbone, the pair is then used by every backbone: fit with
        ``{layer: features[layer]}`` and ``alphas=[alpha]``.

        Returns
        -------
        layer, alpha
            ``alpha`` is on the grid's scale (relative or absolute, see ``alpha_scale``).
        """
        responses = np.asarray(responses)
        alphas = self._check(features, responses, split)
        device = resolve_device(self.device)
        loaded, _, fits = _selection_rows(split, responses.shape[0])
        y_loaded = self._responses(responses, loaded, device)
        best: tuple[float, str, float] | None = None
        for layer in _ordered_layers(list(features)):
            entry, _ = self._layer_entry(features[layer], layer, split, loaded, fits, device)
            per_fit = np.stack([
                self._selection_scores([basis], [part], y_loaded, alphas).mean(dim=1)
                .cpu().numpy() for basis, part in zip(entry.selection, fits, strict=True)])
            score = float(per_fit.max(axis=1).mean())
            votes = np.bincount(per_fit.argmax(axis=1), minlength=alphas.size)
            if best is None or score > best[0]:
                best = (score, layer, float(alphas[int(np.argmax(votes))]))
        return best[1], best[2]

    def _layer_entry(self, array: np.ndarray, layer: str, split: Split, loaded: np.ndarray,
                     fits: list[_Fit], device: torch.device
                     ) -> tuple[_LayerEntry, torch.Tensor | None]:
        """A layer's PCA of every selection fit (from the cache when it has it).

        Also returns the layer's Gram matrix when it was computed here (the final fit reuses
        it), else None.
        """
        key = (layer, _split_key(split), self.n_components, self.standardize, str(device))
        entry = self.cache._get(key, array) if self.cache is not None else None
        if entry is not None:
            return entry, None
        matrix, gram, centring = self._layer_matrix(array, loaded, split.train.size, layer,
                                                    device)
        bases = [self._basis(matrix, gram, part.fit, part.other) for part in fits]
        entry = _LayerEntry(weakref.ref(array), bases, centring)
        if self.cache is not None:
            self.cache._put(key, entry)
        return entry, matrix if gram else None  # only a Gram matrix helps the final fit

    def _responses(self, responses: np.ndarray, rows: np.ndarray,
                   device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.asarray(responses[rows], dtype=np.float32)).to(device)

    def _layer_matrix(self, array: np.ndarray, rows: np.ndarray, n_ref: int, layer: str,
                      device: torch.device) -> tuple[torch.Tensor, bool, _Centring]:
        """Gram matrix (more features than rows) or centred float32 features of ``rows``."""
        gram = array.shape[1] > rows.size
        n_features = array.shape[1]
        centring = _Centring(torch.zeros(n_features),
                             torch.ones(n_features) if self.standardize else None)
        blocks = _fit_blocks(array, rows, n_ref, centring, layer)
        if gram:
            matrix = torch.zeros(rows.size, rows.size, dtype=torch.float32, device=device)
            for block in blocks:
                _add_gram(matrix, block.to(device))
            return _symmetrize(matrix), True, centring
        return torch.cat(list(blocks), dim=1).to(device), False, centring

    def _basis(self, x: torch.Tensor, gram: bool, fit: np.ndarray,
               other: np.ndarray) -> _Basis:
        fit_t = torch.from_numpy(fit).to(x.device)
        other_t = torch.from_numpy(other).to(x.device)
        if gram:
            return _gram_basis(x.index_select(0, fit_t).index_select(1, fit_t),
                               x.index_select(0, other_t).index_select(1, fit_t),
                               self.n_components)
        return _covariance_basis(x.index_select(0, fit_t), x.index_select(0, other_t),
                                 self.n_components)

    def _selection_scores(self, bases: list[_Basis], fits: list[_Fit], y: torch.Tensor,
                          alphas: np.ndarray) -> torch.Tensor:
        """Evaluation r per (α, voxel), averaged over the fits."""
        total = torch.zeros(alphas.size, y.shape[1], dtype=torch.float64, device=y.device)
        for basis, part in zip(bases, fits, strict=True):
            shared, _ = _ridge_coefficients(basis, _take_rows(y, part.fit))
            target = _standardized_columns(_take_rows(y, part.other))
            scale = self._alpha_unit(basis)
            for i, alpha in enumerate(alphas):
                total[i] += _correlations(target, _ridge_predict(basis, shared,
                                                                 float(alpha) * scale))
            del shared, target
        return total / len(fits)

    def _alpha_unit(self, basis: _Basis) -> float:
        """What one unit of the α grid is for a fit: its mean eigenvalue, or 1 (absolute)."""
        if self.alpha_scale == "absolute":
            return 1.0
        return float(basis.eigenvalues.mean()) if basis.n_components else 1.0

    def _bootstrap_scores(self, basis: _Basis, part: _Fit, y: torch.Tensor,
                          alphas: np.ndarray, best: np.ndarray,
                          counts: torch.Tensor) -> np.ndarray:
        """Mean over voxels of the val r (each voxel at its α) under every val resample.

        ``counts`` (n_boot, n_val) says how often each val image is drawn; r is the weighted
        Pearson correlation with those counts as weights (the intercept does not change r).
        Returns (n_boot,) float64.
        """
        shared, _ = _ridge_coefficients(basis, _take_rows(y, part.fit))
        scale = self._alpha_unit(basis)
        alpha = torch.from_numpy(alphas[best] * scale).to(device=y.device, dtype=shared.dtype)
        # Centred on the unweighted mean first, so that float32 sums stay accurate.
        p = _ridge_predict(basis, shared, alpha).float().cpu()
        t = _take_rows(y, part.other).float().cpu()
        p, t = p - p.mean(dim=0), t - t.mean(dim=0)
        w = (counts / counts.sum(dim=1, keepdim=True)).float()
        mp, mt = w @ p, w @ t
        cov = w @ (p * t) - mp * mt
        var_p, var_t = (w @ (p * p) - mp**2).clamp_min(0), (w @ (t * t) - mt**2).clamp_min(0)
        denominator = (var_p * var_t).sqrt()
        r = torch.where(denominator > 0, cov / denominator, torch.zeros_like(cov))
        return r.clamp(-1, 1).mean(dim=1, dtype=torch.float64).numpy()

    def _final_fit_rows(self, split: Split, loaded: np.ndarray) -> np.ndarray:
        return split.train if self.refit == "train" else loaded

    def _final_basis(self, array: np.ndarray, split: Split, loaded: np.ndarray,
                     position: np.ndarray, centring: _Centring,
                     gram_matrix: torch.Tensor | None, device: torch.device) -> _Basis:
        """PCA of the final fit (train ∪ val, or train), with the test rows projected.

        Test rows are read here for the first time.
        """
        fit_rows = self._final_fit_rows(split, loaded)
        fit_t = torch.from_numpy(position[fit_rows]).to(device)
        if gram_matrix is None and array.shape[1] > loaded.size:
            gram_matrix, _, _ = self._layer_matrix(array, loaded, split.train.size,
                                                   self.best_layer_, device)
        width = _column_width(fit_rows.size + split.test.size)
        pairs = zip(iter_columns(array, fit_rows, width), iter_columns(array, split.test, width),
                    strict=True)
        if gram_matrix is not None:
            k_test = torch.zeros(split.test.size, fit_rows.size, dtype=torch.float32,
                                 device=device)
            for (columns, block_fit), (_, block_test) in pairs:
                x_fit = centring.apply(block_fit, columns, self.best_layer_).to(device)
                x_test = centring.apply(block_test, columns, self.best_layer_).to(device)
                k_test.addmm_(x_test, x_fit.T)
            return _gram_basis(gram_matrix.index_select(0, fit_t).index_select(1, fit_t),
                               k_test, self.n_components)
        fit_parts, test_parts = [], []
        for (columns, block_fit), (_, block_test) in pairs:
            fit_parts.append(centring.apply(block_fit, columns, self.best_layer_))
            test_parts.append(centring.apply(block_test, columns, self.best_layer_))
        return _covariance_basis(torch.cat(fit_parts, 1).to(device),
                                 torch.cat(test_parts, 1).to(device), self.n_components)

    def _score_test(self, basis: _Basis, responses: np.ndarray, split: Split, fit: np.ndarray,
                    y_loaded: torch.Tensor, device: torch.device) -> None:
        """Ridge with each voxel's α on the final fit rows; predictions and r on test."""
        shared, mean = _ridge_coefficients(basis, _take_rows(y_loaded, fit))
        self.absolute_alphas_ = self.alphas_ * self._alpha_unit(basis)
        alpha = torch.from_numpy(self.absolute_alphas_).to(device=device, dtype=shared.dtype)
        centred = _ridge_predict(basis, shared, alpha)
        y_test = torch.from_numpy(np.asarray(responses[split.test], dtype=np.float32))
        target = _standardized_columns(y_test.to(device))
        self.n_components_ = basis.n_components
        self.test_r_ = _correlations(target, centred).cpu().numpy()
        self.predictions_ = (centred + mean).cpu().numpy()
