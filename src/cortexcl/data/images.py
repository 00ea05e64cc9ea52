"""Decode-once image store: every image is decoded and resized a single time into an on-disk cache.

The cache is a uint8 ``(N, S, S, 3)`` ``.npy`` file named by a key that hashes the file names,
their byte sizes, their contents and the target size, so any change to the images gives a new
cache. It is written to a temporary file and renamed into place when complete, so an interrupted
build never leaves a partial cache behind. Batches are served as torch tensors on any device.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms
from tqdm.auto import tqdm

from cortexcl.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CHUNK_BYTES = 1 << 20
_CACHE_VERSION = "images-v2"  # v2: bit depths scaled, alpha over white, EXIF turns
FITS = ("stretch", "crop")


def default_cache_dir() -> Path:
    """Return the cache folder: ``$CORTEXCL_CACHE`` when set, else ``~/.cache/cortexcl``."""
    configured = os.environ.get("CORTEXCL_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "cortexcl"


def normalize(batch_uint8: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Scale a uint8 image batch to [0, 1] and normalise it per channel: (x − mean) / std.

    Parameters
    ----------
    batch_uint8 : torch.Tensor
        uint8 tensor of shape (B, 3, S, S).
    mean, std : sequence of 3 floats
        The backbone's normalisation (default ImageNet's; `Backbone.mean`, `Backbone.std`).

    Returns
    -------
    torch.Tensor
        float32 tensor of the same shape, on the same device.
    """
    if batch_uint8.dtype != torch.uint8 or batch_uint8.ndim != 4 or batch_uint8.shape[1] != 3:
        raise ValueError(
            "expected a uint8 (B, 3, S, S) tensor, "
            f"got {batch_uint8.dtype} {tuple(batch_uint8.shape)}"
        )
    device = batch_uint8.device
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return batch_uint8.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def to_rgb8(image: Image.Image) -> Image.Image:
    """The 8-bit RGB picture an image viewer shows for any image Pillow can open.

    * EXIF orientation is applied (a photo taken upright shows upright);
    * 16-bit greyscale (``I;16*``, and ``I`` with values in 0…65535, as 16-bit PNGs open) is
      scaled by 255 / 65535; 32-bit float (``F``) must lie in [0, 1] and is scaled by 255;
    * transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is
      composited over a white background, never dropped;
    * every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, …) is converted by Pillow.

    Raises
    ------
    ValueError
        For integer or float pixel values outside the ranges above (no 8-bit picture is implied).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            if values.size and not (np.isfinite(values).all() and values.min() >= 0
                                    and values.max() <= 1):
                raise ValueError("float image outside [0, 1]: no 8-bit picture is implied")
            scale = 255.0
        else:
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ValueError(f"{image.mode} image with values outside 0-65535")
            scale = 255.0 / 65535.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_rgb8(path: str | os.PathLike) -> Image.Image:
    """Open an image file as the 8-bit RGB picture a viewer shows (see `to_rgb8`).

    A loader for torchvision data sets (``ImageFolder(loader=load_rgb8)``).
    """
    with Image.open(path) as image:
        return to_rgb8(image)


def _decode_image(path: Path, size: int, fit: str = "stretch") -> np.ndarray:
    """Decode one image file to a uint8 (size, size, 3) RGB array (bilinear, antialiased).

    Every mode is first turned into the picture a viewer shows (`to_rgb8`). ``fit="stretch"``
    resizes the whole image to the square; ``"crop"`` keeps the aspect ratio: the shorter side
    is resized to ``size`` and the centre square is kept.
    """
    try:
        rgb = load_rgb8(path)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        reason = str(error).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
        raise InputError(f"{path}: cannot decode image ({reason})") from None
    return _fit(rgb, size, fit)


def _fit(rgb: Image.Image, size: int, fit: str) -> np.ndarray:
    """An RGB picture resized to a uint8 (size, size, 3) array, stretched or centre-cropped."""
    if fit == "crop" and rgb.width != rgb.height:
        rgb = transforms.CenterCrop(size)(transforms.Resize(size)(rgb))
    elif rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


class ImageStore:
    """Images of a dataset, decoded and resized once, served as uint8 or normalised tensors.

    Parameters
    ----------
    paths : sequence of str or Path
        Image files; row i of every array and tensor is ``paths[i]``.
    size : int
        Images are resized to ``size`` × ``size``.
    fit : {"stretch", "crop"}
        A non-square image is stretched to the square (the published NSD/NOD transform) or,
        with ``crop``, resized by its shorter side and centre-cropped (aspect kept).
    cache_dir : str or Path, optional
        Folder of the cache; default ``default_cache_dir() / "images"``.
    workers : int, optional
        Decoding threads; default ``min(8, os.cpu_count())``.
    progress : bool
        Show a progress bar while hashing and decoding.

    Raises
    ------
    InputError
        If there are no paths, ``size`` is not positive, or a file is missing.

    Notes
    -----
    On a CUDA device the whole uint8 array is copied to the GPU on first use and batches are
    cut and normalised there, so no image crosses the bus twice. Batches are normalised with
    ``normalization`` (ImageNet's mean and std unless `normalized` made a store for another
    backbone).
    """

    normalization: tuple[tuple[float, ...], tuple[float, ...]] = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(
        self,
        paths: Sequence[str | Path],
        size: int = 224,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        progress: bool = True,
        fit: str = "stretch",
    ) -> None:
        if fit not in FITS:
            raise InputError(f"image fit must be one of {', '.join(FITS)}, got {fit!r}")
        self.fit = fit
        self.paths: list[Path] = [Path(path) for path in paths]
        if not self.paths:
            raise InputError("no image files given")
        if int(size) != size or size < 1:
            raise InputError(f"image size must be a positive integer, got {size!r}")
        self.size: int = int(size)
        self.cache_dir = (
            Path(cache_dir) if cache_dir is not None else default_cache_dir() / "images"
        )
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.progress = progress
        self._byte_sizes: list[int] = []
        for path in self.paths:
            try:
                self._byte_sizes.append(path.stat().st_size)
            except OSError:
                raise InputError(f"{path}: image file not found") from None
        self._array: np.ndarray | None = None
        self._resident: torch.Tensor | None = None
        self._views: dict[tuple[tuple[float, ...], tuple[float, ...]], ImageStore] = {}

    def __len__(self) -> int:
        return len(self._byte_sizes)

    def __repr__(self) -> str:
        return f"ImageStore({len(self)} images, size={self.size}, cache_dir={self.cache_dir})"

    def normalized(self, mean: Sequence[float], std: Sequence[float]) -> ImageStore:
        """The same images normalised with another mean and std: this store for its own
        normalisation, else one view per normalisation, made once and reused (its decoded
        array and its copy on the GPU are loaded once)."""
        key = (tuple(mean), tuple(std))
        if key == self.normalization:
            return self
        if key not in self._views:
            view = copy.copy(self)
            view.normalization, view._views = key, {}
            self._views[key] = view
        return self._views[key]

    @cached_property
    def key(self) -> str:
        """Hex key of the file names, byte sizes, contents and size; names the cache file."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{_CACHE_VERSION}\0size={self.size}\0n={len(self)}\0".encode())
        if self.fit != "stretch":  # stretched caches keep their earlier keys
            digest.update(f"fit={self.fit}\0".encode())
        self._identify(digest)
        return digest.hexdigest()

    def _identify(self, digest: hashlib.blake2b) -> None:
        """Add what identifies the images to ``digest``: file names, sizes and contents."""
        content = hashlib.blake2b(digest_size=32)
        bar = tqdm(
            total=sum(self._byte_sizes),
            desc="hashing images",
            unit="B",
            unit_scale=True,
            disable=not self.progress,
        )
        with bar:
            for path, n_bytes in zip(self.paths, self._byte_sizes, strict=True):
                digest.update(f"{path.name}\0{n_bytes}\0".encode())
                try:
                    with open(path, "rb") as handle:
                        while chunk := handle.read(_CHUNK_BYTES):
                            content.update(chunk)
                            bar.update(len(chunk))
                except OSError as error:
                    raise InputError(f"{path}: cannot read image file ({error})") from None
        digest.update(content.digest())

    @property
    def cache_path(self) -> Path:
        """The cache file of this store."""
        return self.cache_dir / f"{self.key}.npy"

    def array(self) -> np.ndarray:
        """Return all images as a read-only uint8 (N, S, S, 3) array (memory-mapped cache).

        The cache is built on the first call: images are decoded in parallel threads into a
        temporary file, which is renamed into place once complete.

        Raises
        ------
        InputError
            If an image cannot be decoded (the message names the file).
        """
        if self._array is None:
            expected = (len(self), self.size, self.size, 3)
            array = self._open_cache(expected)
            if array is None:
                self._build_cache(expected)
                array = self._open_cache(expected)
                if array is None:
                    raise InputError(f"{self.cache_path}: image cache unreadable after writing")
            self._array = array
        return self._array

    def _open_cache(self, expected: tuple[int, ...]) -> np.ndarray | None:
        try:
            array = np.load(self.cache_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.shape != expected or array.dtype != np.uint8:
            return None
        return array

    def _build_cache(self, shape: tuple[int, ...]) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{self.key}.", suffix=".tmp.npy", dir=self.cache_dir
        )
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            bar = tqdm(
                total=len(self),
                desc=f"decoding images to {self.size}px",
                unit="img",
                disable=not self.progress,
            )
            chunk = self.workers * 16
            with bar, ThreadPoolExecutor(max_workers=self.workers) as pool:
                for start in range(0, len(self), chunk):
                    stop = min(start + chunk, len(self))
                    for index, image in enumerate(self._decode(pool, start, stop), start):
                        out[index] = image
                        bar.update()
            out.flush()
            del out
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.cache_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def _decode(self, pool: ThreadPoolExecutor, start: int, stop: int) -> Iterator[np.ndarray]:
        """Images ``start`` to ``stop`` (exclusive), decoded and resized, in order."""
        return pool.map(_decode_image, self.paths[start:stop], [self.size] * (stop - start),
                        [self.fit] * (stop - start))

    def _index(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"image index out of range for {len(self)} images")
        return index

    def _on_device(self, device: torch.device) -> torch.Tensor:
        """The whole uint8 (N, S, S, 3) array, copied to ``device`` once, in chunks."""
        if self._resident is None or self._resident.device != device:
            self._resident = None
            array = self.array()
            resident = torch.empty(array.shape, dtype=torch.uint8, device=device)
            step = 1024
            for start in range(0, len(self), step):
                chunk = np.array(array[start : start + step])
                resident[start : start + step] = torch.from_numpy(chunk).to(device)
            self._resident = resident
        return self._resident

    def uint8(
        self, indices: Sequence[int] | np.ndarray, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """Return images as a uint8 (B, 3, S, S) tensor.

        Parameters
        ----------
        indices : sequence of int
            Image indices (rows), in the order wanted.
        device : str or torch.device, optional
            Where the tensor goes; default CPU.
        """
        index = self._index(indices)
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            batch = self._on_device(device)[torch.from_numpy(index).to(device)]
        else:
            batch = torch.from_numpy(self.array()[index])
        return batch.permute(0, 3, 1, 2).contiguous()

    def tensor(
        self, indices: Sequence[int] | np.ndarray, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """Return images as a normalised float32 (B, 3, S, S) tensor (see :func:`normalize`)."""
        return normalize(self.uint8(indices, device), *self.normalization)

    def batches(
        self,
        indices: Sequence[int] | np.ndarray,
        batch_size: int,
        device: str | torch.device | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield normalised float32 batches of at most ``batch_size`` images, in order."""
        if batch_size < 1:
            raise InputError(f"batch size must be positive, got {batch_size}")
        index = self._index(indices)
        for start in range(0, index.size, batch_size):
            yield self.tensor(index[start : start + batch_size], device)


class HDF5ImageStore(ImageStore):
    """Images stored as rows of a uint8 (N, H, W, 3) HDF5 dataset, such as NSD's ``imgBrick``.

    Only the rows ``indices`` are read (once, when the cache is built); row i of every array and
    tensor is dataset row ``indices[i]``. The cache key names the file by its name, byte size and
    modification time and the rows read, not by its content: hashing a 37 GB file at every load
    would cost more than decoding the images.

    Parameters
    ----------
    path : str or Path
        The HDF5 file.
    dataset : str
        Name of the image dataset in it.
    indices : array_like of int
        Dataset rows, in the order wanted.
    size, cache_dir, progress, fit
        As for `ImageStore`.

    Raises
    ------
    InputError
        If the file cannot be opened, lacks the dataset, the dataset is not uint8
        (N, H, W, 3), or a row is out of range.
    """

    def __init__(
        self,
        path: str | Path,
        dataset: str,
        indices: Sequence[int] | np.ndarray,
        size: int = 224,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        fit: str = "stretch",
    ) -> None:
        import h5py

        path = Path(path)
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        try:
            with h5py.File(path, "r") as handle:
                if dataset not in handle:
                    raise InputError(f"{path}: no dataset {dataset!r} (found: "
                                     f"{', '.join(sorted(handle)) or 'none'})")
                images = handle[dataset]
                shape, dtype = images.shape, images.dtype
        except OSError as error:
            raise InputError(f"{path}: not a readable HDF5 file ({error})") from None
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise InputError(f"{path}: {dataset} must be a uint8 (images, height, width, 3) "
                             f"array, found {dtype} {shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
            raise InputError(f"{path}: {dataset} has {shape[0]} images but image "
                             f"{int(rows.max() if rows.max() >= shape[0] else rows.min())} "
                             "is asked for")
        super().__init__([path] * rows.size, size=size, cache_dir=cache_dir, progress=progress,
                         fit=fit)
        self.dataset = dataset
        self.rows = rows

    def _identify(self, digest: hashlib.blake2b) -> None:
        stat = self.paths[0].stat()
        digest.update(f"hdf5\0{self.paths[0].name}\0{self.dataset}\0{stat.st_size}\0"
                      f"{stat.st_mtime_ns}\0".encode())
        digest.update(self.rows.tobytes())

    def _decode(self, pool: ThreadPoolExecutor, start: int, stop: int) -> Iterator[np.ndarray]:
        import h5py

        wanted = self.rows[start:stop]
        unique, inverse = np.unique(wanted, return_inverse=True)  # h5py reads increasing rows
        with h5py.File(self.paths[0], "r") as handle:
            block = handle[self.dataset][unique]
        return pool.map(lambda row: _fit(Image.fromarray(block[row]), self.size, self.fit),
                        inverse.reshape(-1))
