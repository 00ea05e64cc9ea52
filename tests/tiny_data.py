"""A tiny subject in the official Algonauts 2023 layout, written for tests and the corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cortexcl.data.rois import FSAVERAGE_N_VERTICES, ROI_CLASSES

# ROIs left without vertices in the tiny subject (as in the real data: mTL-faces and aTL-faces
# are empty everywhere, mTL-bodies and mTL-words in most hemispheres).
TINY_EMPTY_ROIS = {
    "lh": ("mTL-faces", "aTL-faces", "mTL-bodies"),
    "rh": ("mTL-faces", "aTL-faces", "mTL-words"),
}


@dataclass(frozen=True)
class TinySubject:
    """What `write_tiny_subject` wrote, with the answers tests check against."""

    data_root: Path
    path: Path
    name: str
    n_images: int
    image_size: int
    n_vertices: dict[str, int]
    image_ids: np.ndarray
    roi_sizes: dict[tuple[str, str], int]

    @property
    def image_paths(self) -> list[Path]:
        return sorted((self.path / "training_split" / "training_images").glob("*.png"))

    def fmri_path(self, hemisphere: str) -> Path:
        return self.path / "training_split" / "training_fmri" / f"{hemisphere}_training_fmri.npy"

    @property
    def roi_dir(self) -> Path:
        return self.path / "roi_masks"


def write_tiny_subject(
    data_root: Path,
    subject: int = 1,
    n_images: int = 40,
    image_size: int = 32,
    n_vertices: tuple[int, int] = (300, 260),
    n_test_images: int = 3,
    ground_truth: bool = False,
    seed: int = 0,
    mask_dtype: type = np.int64,
) -> TinySubject:
    """Write a small subject in the official Algonauts 2023 layout.

    In every class, the vertices of label ℓ form one block of 4 + ℓ (lh) or 6 + ℓ (rh) vertices,
    except the ROIs of `TINY_EMPTY_ROIS`, which are empty. With ``ground_truth``, a
    ``ground_truth/`` folder with per-vertex ncsnr and per-image repeat counts is added, as the
    simulator writes it. The fsaverage masks are stored as ``mask_dtype`` (int64, as in the
    release).
    """
    rng = np.random.default_rng(seed)
    name = f"subj{subject:02d}"
    root = Path(data_root) / name
    images_dir = root / "training_split" / "training_images"
    fmri_dir = root / "training_split" / "training_fmri"
    test_dir = root / "test_split" / "test_images"
    roi_dir = root / "roi_masks"
    for folder in (images_dir, fmri_dir, test_dir, roi_dir):
        folder.mkdir(parents=True, exist_ok=True)

    ids = rng.choice(73000, size=n_images + n_test_images, replace=False)
    for i, nsd_id in enumerate(ids[:n_images]):
        pixels = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / f"train-{i + 1:04d}_nsd-{nsd_id:05d}.png")
    for i, nsd_id in enumerate(ids[n_images:]):
        pixels = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(test_dir / f"test-{i + 1:04d}_nsd-{nsd_id:05d}.png")

    sizes = dict(zip(("lh", "rh"), n_vertices, strict=True))
    roi_sizes: dict[tuple[str, str], int] = {}
    for hemisphere, n in sizes.items():
        fmri = rng.standard_normal((n_images, n)).astype(np.float32)
        np.save(fmri_dir / f"{hemisphere}_training_fmri.npy", fmri)
        mask = np.zeros(FSAVERAGE_N_VERTICES, dtype=mask_dtype)
        mask[rng.choice(FSAVERAGE_N_VERTICES, size=n, replace=False)] = 1
        np.save(roi_dir / f"{hemisphere}.all-vertices_fsaverage_space.npy", mask)
        extra = 4 if hemisphere == "lh" else 6
        for class_index, (class_name, table) in enumerate(ROI_CLASSES.items()):
            labels = np.zeros(n, dtype=np.int64)
            start = 10 * class_index
            for label, roi in table.items():
                size = 0 if roi in TINY_EMPTY_ROIS[hemisphere] else extra + label
                labels[start : start + size] = label
                start += size
                roi_sizes[hemisphere, roi] = size
            np.save(roi_dir / f"{hemisphere}.{class_name}_challenge_space.npy", labels)
        if ground_truth:
            gt = root / "ground_truth"
            gt.mkdir(exist_ok=True)
            ncsnr = rng.uniform(0.1, 1.5, size=n).astype(np.float32)
            np.save(gt / f"{hemisphere}_ncsnr.npy", ncsnr)
    for class_name, table in ROI_CLASSES.items():
        mapping = np.array({0: "Unknown", **table}, dtype=object)
        np.save(roi_dir / f"mapping_{class_name}.npy", mapping, allow_pickle=True)
    if ground_truth:
        np.save(root / "ground_truth" / "n_repeats.npy", rng.integers(1, 4, size=n_images))

    return TinySubject(
        data_root=Path(data_root),
        path=root,
        name=name,
        n_images=n_images,
        image_size=image_size,
        n_vertices=sizes,
        image_ids=np.asarray(ids[:n_images], dtype=np.int64),
        roi_sizes=roi_sizes,
    )
