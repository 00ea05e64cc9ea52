"""Tests of ROI classes, names, groups and safe reading of the ROI mask files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cortexcl.data.rois import (
    FSAVERAGE_N_VERTICES,
    HEMISPHERES,
    ROI_CLASSES,
    ROI_GROUPS,
    ROI_NAMES,
    WHOLE_HEMISPHERE,
    expand_rois,
    load_roi_mapping,
    read_fsaverage_index,
    read_roi_labels,
    roi_class,
)
from cortexcl.errors import InputError


class Evil:
    """Pickles to a call of os.system that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- names, classes and groups ----------------------------------------------------------------


def test_tables_match_method():
    assert len(ROI_CLASSES) == 6
    assert len(ROI_NAMES) == len(set(ROI_NAMES)) == 31
    assert ROI_CLASSES["prf-visualrois"] == {
        1: "V1v",
        2: "V1d",
        3: "V2v",
        4: "V2d",
        5: "V3v",
        6: "V3d",
        7: "hV4",
    }
    assert ROI_CLASSES["floc-words"][4] == "mfs-words"
    assert ROI_NAMES[:3] == ("V1v", "V1d", "V2v") and ROI_NAMES[-1] == "parietal"
    assert {group: len(names) for group, names in ROI_GROUPS.items()} == {
        "early": 7,
        "higher": 17,
        "streams": 7,
        "early+higher": 24,
    }
    assert ROI_GROUPS["early+higher"] == ROI_GROUPS["early"] + ROI_GROUPS["higher"]
    assert set(ROI_GROUPS["higher"]) == {
        name
        for cls, table in ROI_CLASSES.items()
        if cls.startswith("floc")
        for name in table.values()
    }
    assert WHOLE_HEMISPHERE == "all" and HEMISPHERES == ("lh", "rh")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("V1v", ("prf-visualrois", 1)),
        ("hV4", ("prf-visualrois", 7)),
        ("EBA", ("floc-bodies", 1)),
        ("mTL-bodies", ("floc-bodies", 4)),
        ("aTL-faces", ("floc-faces", 5)),
        ("RSC", ("floc-places", 3)),
        ("mTL-words", ("floc-words", 5)),
        ("early", ("streams", 1)),
        ("parietal", ("streams", 7)),
        ("ffa-1", ("floc-faces", 2)),
        ("streams:early", ("streams", 1)),
    ],
)
def test_roi_class_known_answers(name, expected):
    assert roi_class(name) == expected


@pytest.mark.parametrize("name", ["V1", "FFA", "higher", "all", "", "prf-visualrois:EBA", "x:V1v"])
def test_roi_class_rejects_unknown_names(name):
    with pytest.raises(InputError) as error:
        roi_class(name)
    message = str(error.value)
    assert "\n" not in message
    if ":" not in name:
        assert "V1v" in message and "mTL-words" in message and "early+higher" in message


def test_expand_rois_expands_groups_keeps_order_and_all():
    assert expand_rois("early") == list(ROI_GROUPS["early"])
    assert expand_rois("higher") == list(ROI_GROUPS["higher"])
    assert expand_rois("streams") == list(ROI_CLASSES["streams"].values())
    assert expand_rois("early+higher") == list(ROI_GROUPS["early"] + ROI_GROUPS["higher"])
    assert expand_rois(["EBA", "early", "V1v", "all", "EBA"]) == [
        "EBA",
        *ROI_GROUPS["early"],
        "all",
    ]
    assert expand_rois("ffa-1, all ,V1v") == ["FFA-1", "all", "V1v"]
    assert expand_rois(["streams:early", "midventral"]) == ["early", "midventral"]


@pytest.mark.parametrize("names", [["V1v", "V9"], "", [], ["early", "bogus"]])
def test_expand_rois_rejects_unknown_or_empty(names):
    with pytest.raises(InputError):
        expand_rois(names)


# --- mapping files ----------------------------------------------------------------------------


def _save_object(path, obj):
    np.save(path, np.array(obj, dtype=object), allow_pickle=True)
    return path


def test_load_roi_mapping_reads_plain_dicts(tmp_path):
    table = {0: "Unknown", **ROI_CLASSES["floc-faces"]}
    assert load_roi_mapping(_save_object(tmp_path / "mapping_floc-faces.npy", table)) == table
    # numpy integer keys and numpy strings need numpy's scalar reconstruction: still plain
    numpy_keys = {np.int64(k): np.str_(v) for k, v in ROI_CLASSES["streams"].items()}
    mapping = load_roi_mapping(_save_object(tmp_path / "mapping_streams.npy", numpy_keys))
    assert mapping == ROI_CLASSES["streams"]
    assert all(type(k) is int and type(v) is str for k, v in mapping.items())
    # a file name that names no class is checked against every class table
    assert load_roi_mapping(_save_object(tmp_path / "labels.npy", ROI_CLASSES["floc-places"]))


@pytest.mark.parametrize("where", ["top", "value", "key"])
def test_malicious_mapping_pickle_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = Evil(marker)
    payload = {
        "top": evil,
        "value": {1: evil, 2: "V1d"},
        "key": {evil: "V1v"},
    }[where]
    path = tmp_path / "mapping_prf-visualrois.npy"
    np.save(path, np.array(payload, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a plain label mapping") as error:
        load_roi_mapping(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_malicious_pickle_would_run_under_plain_np_load(tmp_path):
    """The payload of the test above is live: numpy's own loader executes it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "mapping_prf-visualrois.npy"
    np.save(path, np.array(Evil(marker), dtype=object), allow_pickle=True)
    np.load(path, allow_pickle=True)
    assert marker.exists()


def test_load_roi_mapping_rejects_other_content(tmp_path):
    bad_names = {0: "Unknown", **ROI_CLASSES["prf-visualrois"], 3: "V2"}
    cases = {
        "mapping_prf-visualrois.npy": bad_names,  # name differs from the table
        "mapping_floc-places.npy": ROI_CLASSES["floc-words"],  # another class's table
        "mapping_streams.npy": ["early", "midventral"],  # not a dict
        "mapping_floc-bodies.npy": {"1": "EBA"},  # string label
    }
    for name, obj in cases.items():
        with pytest.raises(InputError, match=name):
            load_roi_mapping(_save_object(tmp_path / name, obj))
    numeric = tmp_path / "mapping_floc-faces.npy"
    np.save(numeric, np.arange(3))
    with pytest.raises(InputError, match="object array"):
        load_roi_mapping(numeric)
    garbage = tmp_path / "mapping_floc-words.npy"
    garbage.write_bytes(b"not a numpy file")
    with pytest.raises(InputError, match="mapping_floc-words.npy"):
        load_roi_mapping(garbage)
    with pytest.raises(InputError, match="not found"):
        load_roi_mapping(tmp_path / "missing.npy")


def test_real_mapping_files_of_all_subjects_load(real_roi_masks):
    for subject in range(1, 9):
        for class_name, table in ROI_CLASSES.items():
            path = real_roi_masks / f"subj{subject:02d}" / f"mapping_{class_name}.npy"
            assert load_roi_mapping(path) == {0: "Unknown", **table}


# --- label and fsaverage masks ----------------------------------------------------------------


def test_real_masks_match_appendix_a(real_roi_masks, appendix_a):
    expected = appendix_a
    for subject in range(1, 9):
        roi_dir = real_roi_masks / f"subj{subject:02d}"
        for hemisphere in HEMISPHERES:
            n = expected[subject, hemisphere, "all"]
            index = read_fsaverage_index(roi_dir, hemisphere, n)
            assert index.shape == (n,) and index.dtype == np.int64
            assert np.all(np.diff(index) > 0) and index[-1] < FSAVERAGE_N_VERTICES
            for class_name, table in ROI_CLASSES.items():
                labels = read_roi_labels(roi_dir, hemisphere, class_name, n)
                assert labels.dtype == np.int64
                for label, roi in table.items():
                    assert np.sum(labels == label) == expected[subject, hemisphere, roi], (
                        subject,
                        hemisphere,
                        roi,
                    )


def test_read_roi_labels_checks_length_and_labels(tiny_subject):
    roi_dir = tiny_subject.roi_dir
    n = tiny_subject.n_vertices["lh"]
    labels = read_roi_labels(roi_dir, "lh", "floc-faces", n)
    assert labels.shape == (n,) and np.sum(labels == 1) == tiny_subject.roi_sizes["lh", "OFA"]
    with pytest.raises(
        InputError, match=rf"lh.floc-faces_challenge_space.npy: {n} labels .* {n + 1}"
    ):
        read_roi_labels(roi_dir, "lh", "floc-faces", n + 1)
    with pytest.raises(InputError, match="unknown ROI class"):
        read_roi_labels(roi_dir, "lh", "faces", n)
    with pytest.raises(InputError, match="unknown hemisphere"):
        read_roi_labels(roi_dir, "left", "floc-faces", n)
    np.save(roi_dir / "lh.floc-places_challenge_space.npy", np.full(n, 4))
    with pytest.raises(InputError, match=r"labels \[4\] are not in the floc-places table"):
        read_roi_labels(roi_dir, "lh", "floc-places", n)
    np.save(roi_dir / "lh.streams_challenge_space.npy", np.zeros((n, 2), dtype=np.int64))
    with pytest.raises(InputError, match="1-D"):
        read_roi_labels(roi_dir, "lh", "streams", n)
    (roi_dir / "lh.floc-words_challenge_space.npy").unlink()
    with pytest.raises(InputError, match="lh.floc-words_challenge_space.npy: file not found"):
        read_roi_labels(roi_dir, "lh", "floc-words", n)


def test_read_fsaverage_index_checks_mask(tiny_subject):
    roi_dir = tiny_subject.roi_dir
    n = tiny_subject.n_vertices["rh"]
    mask = np.load(roi_dir / "rh.all-vertices_fsaverage_space.npy")
    np.testing.assert_array_equal(read_fsaverage_index(roi_dir, "rh", n), np.where(mask)[0])
    with pytest.raises(InputError, match=f"marks {n} vertices but the rh fMRI has {n - 1}"):
        read_fsaverage_index(roi_dir, "rh", n - 1)
    np.save(roi_dir / "rh.all-vertices_fsaverage_space.npy", mask[:-1])
    with pytest.raises(InputError, match="163841 entries but fsaverage has 163842"):
        read_fsaverage_index(roi_dir, "rh", n)
    mask[np.flatnonzero(mask)[0]] = 2
    np.save(roi_dir / "rh.all-vertices_fsaverage_space.npy", mask)
    with pytest.raises(InputError, match="0/1 mask"):
        read_fsaverage_index(roi_dir, "rh", n)
