"""Tests of the Algonauts 2023 reader: the layout, validation, ROI lookup and real masks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cortexcl.data.algonauts import load_subject
from cortexcl.data.rois import HEMISPHERES, ROI_CLASSES, ROI_NAMES
from cortexcl.data.subject import Subject, subject_name
from cortexcl.errors import InputError


def load(tiny, **kwargs) -> Subject:
    return load_subject(tiny.data_root, 1, image_size=16, progress=False, **kwargs)


def one_line_error(call, *patterns):
    """Call, expect an InputError whose single-line message contains every pattern."""
    with pytest.raises(InputError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return message


@pytest.mark.parametrize("value", [1, "1", "01", "subj01", "SUBJ1", " 1 "])
def test_subject_name(value):
    assert subject_name(value) == "subj01"
    assert subject_name(12) == "subj12"


@pytest.mark.parametrize("value", [0, "subj", "one", "-1", "s01"])
def test_subject_name_rejects(value):
    with pytest.raises(InputError):
        subject_name(value)


# --- a valid subject --------------------------------------------------------------------------


def test_load_tiny_subject(tiny_subject, tmp_path):
    subject = load(tiny_subject, cache_dir=tmp_path / "cache")
    assert subject.name == "subj01" and subject.root == tiny_subject.path
    assert subject.n_images == 40 and len(subject.images) == 40
    np.testing.assert_array_equal(subject.image_ids, tiny_subject.image_ids)
    assert subject.image_ids.dtype == np.int64
    assert [p.name for p in subject.images.paths] == [p.name for p in tiny_subject.image_paths]
    assert subject.images.size == 16
    assert subject.images.array().shape == (40, 16, 16, 3)
    for hemisphere in HEMISPHERES:
        n = tiny_subject.n_vertices[hemisphere]
        assert subject.n_vertices(hemisphere) == n
        fmri = np.load(tiny_subject.fmri_path(hemisphere))
        for roi in (None, "all"):
            responses = subject.responses(hemisphere, roi)
            assert responses.dtype == np.float32 and responses.flags.writeable
            np.testing.assert_array_equal(responses, fmri)
        np.testing.assert_array_equal(subject.roi_indices(hemisphere, "all"), np.arange(n))
        mask = np.load(tiny_subject.roi_dir / f"{hemisphere}.all-vertices_fsaverage_space.npy")
        np.testing.assert_array_equal(subject.vertex_to_fsaverage(hemisphere), np.where(mask)[0])


def test_roi_lookup_and_sizes(tiny_subject):
    subject = load(tiny_subject)
    fmri = np.load(tiny_subject.fmri_path("rh"))
    labels = np.load(tiny_subject.roi_dir / "rh.floc-faces_challenge_space.npy")
    columns = subject.roi_indices("rh", "FFA-2")
    assert columns.dtype == np.int64 and columns.size == tiny_subject.roi_sizes["rh", "FFA-2"]
    np.testing.assert_array_equal(columns, np.flatnonzero(labels == 3))
    np.testing.assert_array_equal(subject.responses("rh", "FFA-2"), fmri[:, labels == 3])
    np.testing.assert_array_equal(subject.responses("rh", "ffa-2"), fmri[:, labels == 3])
    # "early" is the streams ROI here (the group of that name is expanded by expand_rois)
    streams = np.load(tiny_subject.roi_dir / "rh.streams_challenge_space.npy")
    np.testing.assert_array_equal(subject.roi_indices("rh", "early"), np.flatnonzero(streams == 1))

    sizes = subject.roi_sizes()
    assert list(sizes.columns) == ["subject", "hemisphere", "roi", "roi_class", "n_vertices"]
    assert len(sizes) == 62 and set(sizes["subject"]) == {"subj01"}
    assert list(sizes["roi"][:31]) == list(ROI_NAMES)
    for row in sizes.itertuples():
        assert row.n_vertices == tiny_subject.roi_sizes[row.hemisphere, row.roi]
        assert row.roi in ROI_CLASSES[row.roi_class].values()


def test_empty_and_unknown_rois(tiny_subject):
    subject = load(tiny_subject)
    assert subject.roi_indices("lh", "mTL-faces").size == 0
    message = one_line_error(lambda: subject.responses("lh", "mTL-faces"))
    assert message == "subj01 lh mTL-faces: ROI is empty (0 vertices)"
    one_line_error(lambda: subject.responses("rh", "mTL-words"), "rh mTL-words: ROI is empty")
    assert subject.responses("lh", "mTL-words").shape == (
        40,
        tiny_subject.roi_sizes["lh", "mTL-words"],
    )
    one_line_error(lambda: subject.responses("lh", "FFA"), "unknown ROI 'FFA'", "FFA-1")
    one_line_error(lambda: subject.roi_indices("lh", "higher"), "'higher'")
    one_line_error(lambda: subject.responses("left"), "unknown hemisphere 'left'")


def test_noise_ceiling_from_ground_truth(tmp_path, make_tiny_subject):
    metrics = pytest.importorskip("cortexcl.metrics")
    tiny = make_tiny_subject(tmp_path / "data", ground_truth=True)
    subject = load(tiny)
    ncsnr = np.load(tiny.path / "ground_truth" / "lh_ncsnr.npy").astype(np.float64)
    repeats = np.load(tiny.path / "ground_truth" / "n_repeats.npy")
    indices = np.arange(0, 40, 3)
    counts = {k: np.sum(repeats[indices] == k) for k in (1, 2, 3)}
    noise = (counts[3] / 3 + counts[2] / 2 + counts[1]) / indices.size
    expected = ncsnr**2 / (ncsnr**2 + noise)
    np.testing.assert_allclose(subject.noise_ceiling("lh", indices), expected, rtol=1e-5)
    np.testing.assert_allclose(
        subject.noise_ceiling("lh"), metrics.noise_ceiling(ncsnr, repeats), rtol=1e-6
    )


def test_no_noise_ceiling_without_ground_truth(tiny_subject):
    assert load(tiny_subject).noise_ceiling("lh") is None


def test_data_hash_is_stable_and_tracks_the_data(tiny_subject):
    first = load(tiny_subject).data_hash()
    assert first == load(tiny_subject).data_hash()
    assert len(first) == 16 and int(first, 16) >= 0
    fmri = np.load(tiny_subject.fmri_path("rh"))
    fmri[0, 0] += 1
    np.save(tiny_subject.fmri_path("rh"), fmri)
    assert load(tiny_subject).data_hash() != first


# --- bad inputs: one clear line naming the file, nothing written ------------------------------


def files_under(*folders) -> list[str]:
    return sorted(str(p) for folder in folders for p in Path(folder).rglob("*") if p.is_file())


def load_fails(tiny, *patterns, subject=1) -> str:
    """Loading fails with a one-line InputError holding ``patterns`` and writes no file."""
    watched = (tiny.data_root.parent, os.environ["CORTEXCL_CACHE"])
    before = files_under(*watched)
    message = one_line_error(
        lambda: load_subject(tiny.data_root, subject, image_size=16, progress=False), *patterns
    )
    assert files_under(*watched) == before
    return message


def test_missing_subject_folder(tiny_subject):
    load_fails(tiny_subject, "subj02: subject folder not found", subject=2)


def test_missing_fmri_file(tiny_subject):
    tiny_subject.fmri_path("rh").unlink()
    load_fails(tiny_subject, "rh_training_fmri.npy: file not found")


def test_missing_mapping_file(tiny_subject):
    (tiny_subject.roi_dir / "mapping_floc-words.npy").unlink()
    load_fails(tiny_subject, "mapping_floc-words.npy: file not found")


def test_one_dimensional_fmri(tiny_subject):
    np.save(tiny_subject.fmri_path("lh"), np.zeros(40, dtype=np.float32))
    load_fails(tiny_subject, "lh_training_fmri.npy: expected a 2-D", "(40,)")


def test_integer_fmri(tiny_subject):
    np.save(tiny_subject.fmri_path("lh"), np.zeros((40, 300), dtype=np.int32))
    load_fails(tiny_subject, "lh_training_fmri.npy", "floating-point", "int32")


def test_row_and_image_count_mismatch(tiny_subject):
    tiny_subject.image_paths[-1].unlink()
    message = load_fails(tiny_subject)
    assert message == f"{tiny_subject.fmri_path('lh')}: 40 rows but 39 training images"


@pytest.mark.parametrize("short", ["lh", "rh"])
def test_the_short_hemisphere_is_named(tiny_subject, short):
    fmri = np.load(tiny_subject.fmri_path(short))
    np.save(tiny_subject.fmri_path(short), fmri[:-1])
    assert load_fails(tiny_subject) == (f"{tiny_subject.fmri_path(short)}: 39 rows but 40 "
                                        "training images")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_fmri(tiny_subject, value):
    fmri = np.load(tiny_subject.fmri_path("rh"))
    fmri[17, 5] = value
    np.save(tiny_subject.fmri_path("rh"), fmri)
    load_fails(tiny_subject, "rh_training_fmri.npy: non-finite value", "row 17, column 5")


def test_mask_length_mismatch(tiny_subject):
    path = tiny_subject.roi_dir / "lh.prf-visualrois_challenge_space.npy"
    np.save(path, np.load(path)[:-1])
    load_fails(tiny_subject, f"{path}: 299 labels but the lh fMRI has 300 columns")


def test_all_vertices_mask_count_mismatch(tiny_subject):
    path = tiny_subject.roi_dir / "rh.all-vertices_fsaverage_space.npy"
    mask = np.load(path)
    mask[np.flatnonzero(mask)[0]] = 0
    np.save(path, mask)
    load_fails(tiny_subject, f"{path}: marks 259 vertices but the rh fMRI has 260")


def test_malicious_mapping_pickle(tiny_subject, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tiny_subject.roi_dir / "mapping_floc-bodies.npy"
    np.save(path, np.array({1: Evil()}, dtype=object), allow_pickle=True)
    load_fails(tiny_subject, f"{path}: not a plain label mapping")
    assert not marker.exists()


def test_bad_image_file_name(tiny_subject):
    path = tiny_subject.image_paths[0]
    path.rename(path.with_name("image-0001.png"))
    load_fails(tiny_subject, "image-0001.png: bad image file name")


def test_duplicate_nsd_id(tiny_subject):
    first, second = tiny_subject.image_paths[:2]
    nsd = first.name.split("nsd-")[1]
    second.rename(second.with_name(f"train-0002_nsd-{nsd}"))
    load_fails(tiny_subject, f"NSD id {int(nsd[:5])} appears more than once")


def test_corrupt_png_is_reported_on_first_decode(tiny_subject, tmp_path):
    victim = tiny_subject.image_paths[7]
    victim.write_bytes(victim.read_bytes()[:60])
    subject = load(tiny_subject)
    before = files_under(tmp_path, os.environ["CORTEXCL_CACHE"])
    one_line_error(subject.images.array, f"{victim}: cannot decode image")
    assert files_under(tmp_path, os.environ["CORTEXCL_CACHE"]) == before


# --- the real ROI masks -----------------------------------------------------------------------


@pytest.fixture
def real_subject(real_roi_masks, tmp_path):
    """subj01 with the real ROI masks, 12 tiny images and random responses."""
    root = tmp_path / "data" / "subj01"
    images = root / "training_split" / "training_images"
    fmri = root / "training_split" / "training_fmri"
    images.mkdir(parents=True)
    fmri.mkdir(parents=True)
    (root / "roi_masks").symlink_to(real_roi_masks / "subj01", target_is_directory=True)
    rng = np.random.default_rng(1)
    template = tmp_path / "template.png"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(template)
    for i in range(12):
        shutil.copy(template, images / f"train-{i + 1:04d}_nsd-{100 + i:05d}.png")
    for hemisphere, n in (("lh", 19004), ("rh", 20544)):
        responses = rng.standard_normal((12, n)).astype(np.float32)
        np.save(fmri / f"{hemisphere}_training_fmri.npy", responses)
    return root.parent


def test_real_masks_of_subject_01(real_subject, appendix_a):
    subject = load_subject(real_subject, "subj01", progress=False)
    assert subject.n_vertices("lh") == 19004 and subject.n_vertices("rh") == 20544
    assert subject.vertex_to_fsaverage("lh").shape == (19004,)
    assert subject.vertex_to_fsaverage("rh").shape == (20544,)
    sizes = subject.roi_sizes().set_index(["hemisphere", "roi"])["n_vertices"]
    for (hemisphere, roi), n in sizes.items():
        assert n == appendix_a[1, hemisphere, roi], (hemisphere, roi)
    assert sizes["lh", "V1v"] == 710 and sizes["rh", "V1v"] == 444
    assert sizes["lh", "EBA"] == 2837 and sizes["lh", "FFA-2"] == 0
    assert subject.responses("lh", "V1v").shape == (12, 710)
    empty = {h: set(sizes[h][sizes[h] == 0].index) for h in HEMISPHERES}
    assert empty == {
        "lh": {"FBA-2", "mTL-bodies", "FFA-2", "mTL-faces", "aTL-faces", "mTL-words"},
        "rh": {"mTL-bodies", "mTL-faces", "aTL-faces", "mfs-words", "mTL-words"},
    }
    for hemisphere, names in empty.items():
        for roi in names:
            one_line_error(
                lambda h=hemisphere, r=roi: subject.responses(h, r),
                f"subj01 {hemisphere} {roi}: ROI is empty (0 vertices)",
            )
