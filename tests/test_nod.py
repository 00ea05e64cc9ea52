"""NOD reader and simulated-NOD writer: round trip, normalisations, selection, malformed files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from nibabel.cifti2 import cifti2_axes
from PIL import Image

from cortexcl.data.nod import (
    NODSubject,
    choose_r2_map,
    load_nod_subject,
    nod_subject_name,
    read_stimulus_names,
)
from cortexcl.data.simulate import simulate_nod_subject
from cortexcl.data.splits import make_splits
from cortexcl.errors import InputError

K = 5
PER_ROI = 12
SIZES = {"n_sessions": 3, "n_runs": 2, "trials_per_run": 12, "image_size": 48,
         "vertices_per_roi": PER_ROI, "other_vertices": 20, "unlabelled_vertices": 8}
ROIS = ("V1", "V2", "V3", "V4")
ROI_ROWS = {"V1": 0, "V2": 3, "V3": 4, "V4": 5}
SUB = "sub-01"


@pytest.fixture(scope="module")
def nod_root(tmp_path_factory) -> Path:
    """A simulated NOD subject: 3 sessions × 2 runs × 12 trials, 76 + 78 grayordinates."""
    return simulate_nod_subject(tmp_path_factory.mktemp("nod") / "ds", 1, seed=3,
                                progress=False, **SIZES)


@pytest.fixture
def nod_copy(nod_root: Path, tmp_path: Path) -> Path:
    """A private copy of the simulated dataset, free to damage."""
    return Path(shutil.copytree(nod_root, tmp_path / "ds"))


def load(root: Path, **options) -> NODSubject:
    settings = {"sessions": (1, 2), "top_k": K, "image_size": 32, "progress": False}
    return load_nod_subject(root, 1, **(settings | options))


def results(root: Path) -> Path:
    return root / "derivatives" / "ciftify" / SUB / "results"


def beta_path(root: Path, session: int, run: int) -> Path:
    stem = f"ses-imagenet{session:02d}_task-imagenet_run-{run}"
    return results(root) / stem / f"{stem}_beta.dscalar.nii"


def events_path(root: Path, session: int, run: int) -> Path:
    return (root / SUB / f"ses-imagenet{session:02d}" / "func"
            / f"{SUB}_ses-imagenet{session:02d}_task-imagenet_run-{run:02d}_events.tsv")


def prf_path(root: Path) -> Path:
    return results(root) / "ses-prf_task-prf" / "ses-prf_task-prf_params.dscalar.nii"


def atlas_path(root: Path) -> Path:
    return root / "derivatives" / "supportfiles" / "MMP_mpmLR32k.mat"


def n_cortex(root: Path) -> dict[str, int]:
    truth = root / "derivatives" / "ground_truth" / SUB / "simulation.json"
    return json.loads(truth.read_text())["n_grayordinates"]


def resave(path: Path, data: np.ndarray, axes: tuple) -> None:
    image = nib.Cifti2Image(np.asarray(data, dtype=np.float32), header=axes)
    image.nifti_header.set_intent("ConnDenseScalar")
    nib.save(image, path)


def read_cifti(path: Path) -> tuple[np.ndarray, cifti2_axes.Axis, cifti2_axes.Axis]:
    image = nib.load(path)
    return image.get_fdata(), image.header.get_axis(0), image.header.get_axis(1)


def direct_runs(root: Path, sessions=(1, 2)) -> list[np.ndarray]:
    """Cortical betas (float64, left then right) of every run, read with nibabel directly.

    The simulated files hold the left cortex, then the right (the pRF file adds subcortex).
    """
    n = sum(n_cortex(root).values())
    return [read_cifti(beta_path(root, s, r))[0][:, :n] for s in sessions for r in (1, 2)]


def columns(subject: NODSubject, root: Path, hemisphere: str) -> np.ndarray:
    offset = 0 if hemisphere == "lh" else n_cortex(root)["lh"]
    return offset + subject.vertex_table(hemisphere)["cortex_index"].to_numpy()


# --------------------------------------------------------------------------------------------
# Round trip


def test_round_trip(nod_root: Path) -> None:
    subject = load(nod_root)
    assert subject.name == SUB and subject.root == nod_root / SUB
    assert subject.n_images == 48 and subject.rois == ROIS
    np.testing.assert_array_equal(subject.image_ids, np.arange(48))
    events = pd.concat([pd.read_csv(events_path(nod_root, s, r), sep="\t")
                        for s in (1, 2) for r in (1, 2)], ignore_index=True)
    assert list(subject.trials["stim_file"]) == list(events["stim_file"])
    np.testing.assert_array_equal(subject.trials["class_id"], events["trial_type"].astype(int))
    assert list(subject.trials["session"]) == [1] * 24 + [2] * 24
    assert list(subject.trials["run"]) == ([1] * 12 + [2] * 12) * 2
    assert list(subject.trials["trial"]) == list(range(1, 13)) * 4
    assert subject.trials["superclass_id"].notna().all()
    assert subject.r2_map.index == 3 and subject.r2_map.chosen_by == "name"
    for hemisphere in ("lh", "rh"):
        responses = subject.responses(hemisphere)
        assert responses.shape == (48, 4 * K) and responses.dtype == np.float32
        assert subject.n_vertices(hemisphere) == 4 * K
        parts = [subject.roi_indices(hemisphere, roi) for roi in ROIS]
        assert all(len(p) == K for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(4 * K))
        np.testing.assert_array_equal(subject.responses(hemisphere, "V3"), responses[:, parts[2]])
    with Image.open(nod_root / "stimuli" / events["stim_file"][0]) as stimulus:
        assert stimulus.size == (48, 36)  # 4:3 on disk
    assert subject.images.array().shape == (48, 32, 32, 3)  # stretched to a square


def test_sessions_select_and_exclude(nod_root: Path) -> None:
    with pytest.raises(InputError, match="ses-imagenet04"):
        load(nod_root, sessions=(1, 2, 3, 4))  # the default
    three = load(nod_root, sessions=(1, 2, 3))
    two = load(nod_root)  # session 3 left out, like ses-imagenet05 in NOD
    assert three.n_images == 72 and two.n_images == 48
    np.testing.assert_array_equal(three.responses("lh")[:48], two.responses("lh"))


@pytest.mark.parametrize("normalization", ["run", "block"])
def test_normalisation_matches_formula(nod_root: Path, normalization: str) -> None:
    subject = load(nod_root, normalization=normalization)
    expected = []
    for block in direct_runs(nod_root):
        if normalization == "run":
            expected.append((block - block.mean(axis=0)) / block.std(axis=0))
        else:
            expected.append((block - block.mean()) / block.std())
    expected = np.concatenate(expected)
    for hemisphere in ("lh", "rh"):
        np.testing.assert_allclose(subject.responses(hemisphere),
                                   expected[:, columns(subject, nod_root, hemisphere)],
                                   rtol=1e-5, atol=1e-5)
    if normalization == "run":
        values = subject.responses("lh")[:12]
        np.testing.assert_allclose(values.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(values.std(axis=0), 1, atol=1e-5)


def expected_selection(root: Path, k: int | None) -> dict[tuple[str, str], set[int]]:
    """Top-k cortex indices per (hemisphere, ROI), from the files directly."""
    sizes = n_cortex(root)
    data, names, _ = read_cifti(prf_path(root))
    assert list(names.name)[3] == "R2"
    r2 = np.nan_to_num(data[3], nan=0.0)
    labels = scipy.io.loadmat(atlas_path(root))["glasser_MMP"].ravel()
    chosen = {}
    for hemisphere, start, offset in (("lh", 0, 1), ("rh", sizes["lh"], 181)):
        part = slice(start, start + sizes[hemisphere])
        for roi in ROIS:
            members = np.flatnonzero(labels[part] == offset + ROI_ROWS[roi])
            order = members[np.argsort(-r2[part][members], kind="stable")]
            chosen[hemisphere, roi] = set(order[:k].tolist() if k else members.tolist())
    return chosen


@pytest.mark.parametrize("top_k", [K, 1, None, "all", 500])
def test_top_k_takes_largest_r2(nod_root: Path, top_k) -> None:
    subject = load(nod_root, top_k=top_k)
    k = top_k if isinstance(top_k, int) else None
    for (hemisphere, roi), wanted in expected_selection(nod_root, k).items():
        table = subject.vertex_table(hemisphere)
        got = table.loc[table["roi"] == roi, "cortex_index"]
        assert set(got) == wanted and len(got) == min(k or PER_ROI, PER_ROI)
        assert list(got) == sorted(got)


def test_top_k_prefers_reliable_vertices(nod_root: Path) -> None:
    subject = load(nod_root)
    truth = nod_root / "derivatives" / "ground_truth" / SUB
    for hemisphere in ("lh", "rh"):
        ncsnr = np.load(truth / f"{hemisphere}_ncsnr.npy")
        everything = load(nod_root, top_k=None).vertex_table(hemisphere)["cortex_index"]
        chosen = subject.vertex_table(hemisphere)["cortex_index"]
        assert ncsnr[chosen].mean() > ncsnr[everything].mean() + 0.05


def test_ground_truth_is_retinotopic(nod_root: Path) -> None:
    truth = nod_root / "derivatives" / "ground_truth" / SUB
    sizes = {}
    for hemisphere, side in (("lh", 1), ("rh", -1)):
        frame = pd.read_csv(truth / f"{hemisphere}_prf.csv", keep_default_na=False,
                            na_values=[""])
        areas = frame[frame["area"].isin(ROIS)]
        assert len(areas) == 4 * PER_ROI and (np.sign(areas["x"]) == side).all()
        for roi in ("V1", "V2", "V3"):
            y = areas.loc[areas["area"] == roi, "y"]
            assert (y > 0).any() and (y < 0).any()
        assert (areas.loc[areas["area"] == "V4", "y"] > 0).all()
        for roi in ROIS:
            sizes.setdefault(roi, []).extend(areas.loc[areas["area"] == roi, "size"])
        assert (frame.loc[frame["glasser_label"] == 0, "model"] == "none").all()
    means = [np.mean(sizes[roi]) for roi in ROIS]
    assert means == sorted(means)


def test_noise_ceiling_and_hash(nod_copy: Path) -> None:
    subject = load(nod_copy)
    ncsnr = np.load(nod_copy / "derivatives" / "ground_truth" / SUB / "rh_ncsnr.npy")
    chosen = subject.vertex_table("rh")["cortex_index"].to_numpy()
    expected = ncsnr[chosen].astype(np.float64) ** 2 / (ncsnr[chosen].astype(np.float64) ** 2 + 1)
    np.testing.assert_allclose(subject.noise_ceiling("rh", np.arange(10)), expected, rtol=1e-6)
    assert subject.data_hash() == load(nod_copy).data_hash()
    assert subject.data_hash() != load(nod_copy, normalization="block").data_hash()
    shutil.rmtree(nod_copy / "derivatives" / "ground_truth")
    assert load(nod_copy).noise_ceiling("lh") is None


def test_expand_rois(nod_root: Path) -> None:
    subject = load(nod_root)
    assert subject.expand_rois("all") == list(ROIS)
    assert subject.expand_rois("v2, V1,v2") == ["V2", "V1"]
    assert subject.expand_rois(["V4", "all"]) == ["V4", "V1", "V2", "V3"]
    assert len(subject.roi_indices("lh", "v4")) == K
    np.testing.assert_array_equal(subject.roi_indices("lh", "all"), np.arange(4 * K))
    for bad in ("V5", "V1v", ""):
        with pytest.raises(InputError):
            subject.expand_rois(bad)
    with pytest.raises(InputError, match="hemisphere"):
        subject.responses("left")


# --------------------------------------------------------------------------------------------
# File variants the reader must accept


def test_both_run_spellings(nod_root: Path, nod_copy: Path) -> None:
    reference = load(nod_root)
    for folder in list(results(nod_copy).glob("ses-imagenet*_run-*")):  # derivatives: run-01
        padded = folder.name.replace("_run-", "_run-0")
        for path in folder.iterdir():
            path.rename(folder / path.name.replace(folder.name, padded))
        folder.rename(folder.with_name(padded))
    for path in list((nod_copy / SUB).rglob("*_events.tsv")):  # raw: run-1
        path.rename(path.with_name(path.name.replace("_run-0", "_run-")))
    swapped = load(nod_copy)
    for hemisphere in ("lh", "rh"):
        np.testing.assert_array_equal(swapped.responses(hemisphere),
                                      reference.responses(hemisphere))
    assert list(swapped.trials["stim_file"]) == list(reference.trials["stim_file"])


def test_hemispheres_come_from_the_brain_model_axis(nod_root: Path, nod_copy: Path) -> None:
    reference = load(nod_root, normalization="block")
    n_lh = n_cortex(nod_copy)["lh"]
    path = beta_path(nod_copy, 1, 2)
    data, maps, axis = read_cifti(path)
    resave(path, np.concatenate([data[:, n_lh:], data[:, :n_lh]], axis=1),
           (maps, axis[n_lh:] + axis[:n_lh]))
    data, maps, axis = read_cifti(prf_path(nod_copy))
    n = sum(n_cortex(nod_copy).values())
    order = np.r_[n_lh:n, :n_lh, n:data.shape[1]]
    resave(prf_path(nod_copy), data[:, order], (maps, axis[n_lh:n] + axis[:n_lh] + axis[n:]))
    moved = load(nod_copy, normalization="block")
    for hemisphere in ("lh", "rh"):
        np.testing.assert_allclose(moved.responses(hemisphere), reference.responses(hemisphere),
                                   rtol=1e-6, atol=1e-6)
        pd.testing.assert_frame_equal(moved.vertex_table(hemisphere),
                                      reference.vertex_table(hemisphere))


def test_r2_map_chosen_by_name(nod_root: Path, nod_copy: Path) -> None:
    reference = load(nod_root)
    data, maps, axis = read_cifti(prf_path(nod_copy))
    names = list(maps.name)
    order = [3, 0, 1, 2, 4]
    resave(prf_path(nod_copy), data[order], (cifti2_axes.ScalarAxis([names[i] for i in order]),
                                             axis))
    moved = load(nod_copy)
    assert (moved.r2_map.index, moved.r2_map.name, moved.r2_map.chosen_by) == (0, "R2", "name")
    pd.testing.assert_frame_equal(moved.vertex_table("lh"), reference.vertex_table("lh"))

    resave(prf_path(nod_copy), data, (cifti2_axes.ScalarAxis([""] * 5), axis))
    unnamed = load(nod_copy)
    assert (unnamed.r2_map.index, unnamed.r2_map.chosen_by) == (3, "index")
    pd.testing.assert_frame_equal(unnamed.vertex_table("rh"), reference.vertex_table("rh"))

    resave(prf_path(nod_copy), data,
           (cifti2_axes.ScalarAxis(["ang", "ecc", "gain", "fit", "rfsize"]), axis))
    with pytest.raises(InputError, match="ses-prf_task-prf_params.dscalar.nii.*no map named"):
        load(nod_copy)


def test_choose_r2_map_and_names() -> None:
    path = Path("prf.dscalar.nii")
    assert choose_r2_map(["ang", "ecc", "gain", "prf_R2", "size"], path).index == 3
    assert choose_r2_map(["R^2", "ecc"], path).index == 0
    assert choose_r2_map(["rsq"], path).chosen_by == "name"
    assert choose_r2_map(["#1", "#2", "#3", "#4"], path).chosen_by == "index"
    with pytest.raises(InputError, match="several"):
        choose_r2_map(["R2", "r2_half"], path)
    with pytest.raises(InputError, match="only 3"):
        choose_r2_map(["", "", ""], path)
    for given in (1, "1", "01", "sub01", "sub-01", " SUB-1 "):
        assert nod_subject_name(given) == "sub-01"
    with pytest.raises(InputError):
        nod_subject_name("subj-x")


def test_label_files_with_and_without_separators(tmp_path: Path) -> None:
    names = ["n01440764_1.JPEG", "n01443537_22.jpeg", "n0_3.JPEG"]
    for text in ("".join(names), "\n".join(names) + "\n", " ".join(names)):
        path = tmp_path / "label.txt"
        path.write_text(text)
        assert read_stimulus_names(path) == names


# --------------------------------------------------------------------------------------------
# Malformed datasets


def _drop_first_left_vertex(path: Path) -> None:
    data, maps, axis = read_cifti(path)
    resave(path, data[:, 1:], (maps, axis[1:]))


def _swap_axes(path: Path) -> None:
    data, maps, axis = read_cifti(path)
    resave(path, data.T, (axis, maps))


def _scalar_axes(path: Path) -> None:
    data, maps, _ = read_cifti(path)
    resave(path, data, (maps, cifti2_axes.ScalarAxis([f"c{i}" for i in range(data.shape[1])])))


def _nan_beta(path: Path) -> None:
    data, maps, axis = read_cifti(path)
    data[4, 7] = np.nan
    resave(path, data, (maps, axis))


def _edit_atlas(root: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    labels = scipy.io.loadmat(atlas_path(root))["glasser_MMP"]
    scipy.io.savemat(atlas_path(root), {"glasser_MMP": edit(labels)})


def _drop_last_trial(root: Path) -> None:
    path = events_path(root, 2, 1)
    events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    path.write_text(events.iloc[:-1].to_csv(sep="\t", index=False))
    label = beta_path(root, 2, 1).with_name("ses-imagenet02_task-imagenet_run-1_label.txt")
    label.write_text("".join(read_stimulus_names(label)[:-1]))


def _swap_labels(root: Path) -> None:
    label = beta_path(root, 1, 2).with_name("ses-imagenet01_task-imagenet_run-2_label.txt")
    names = read_stimulus_names(label)
    names[2], names[5] = names[5], names[2]
    label.write_text("".join(names))


def _extra_beta_folder(root: Path) -> None:
    shutil.copytree(beta_path(root, 1, 2).parent,
                    results(root) / "ses-imagenet01_task-imagenet_run-3")


def _drop_column(root: Path) -> None:
    path = events_path(root, 1, 1)
    events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    path.write_text(events.drop(columns="trial_type").to_csv(sep="\t", index=False))


def _remove_v4_row(root: Path) -> None:
    path = root / "derivatives" / "supportfiles" / "roilbl_mmp.csv"
    path.write_text(path.read_text().replace("L_V4_ROI,R_V4_ROI", "L_V4x_ROI,R_V4x_ROI"))


MALFORMED = {
    "prf grayordinates": (lambda r: _drop_first_left_vertex(prf_path(r)),
                          r"ses-prf_task-prf_params\.dscalar\.nii: cortical grayordinates"),
    "beta grayordinates": (lambda r: _drop_first_left_vertex(beta_path(r, 2, 2)),
                           r"run-2_beta\.dscalar\.nii: cortical grayordinates \(L 75 \+ R 78\)"),
    "atlas grayordinates": (lambda r: _edit_atlas(r, lambda a: np.vstack([a, [[0.0]]])),
                            r"MMP_mpmLR32k\.mat: 155 labels but the betas have 154"),
    "atlas hemisphere order": (lambda r: _edit_atlas(r, lambda a: a[::-1]),
                               r"MMP_mpmLR32k\.mat: .*labels outside"),
    "brain models on axis 0": (lambda r: _swap_axes(beta_path(r, 1, 1)),
                               r"run-1_beta\.dscalar\.nii: .*brain-model axis is axis 0"),
    "no brain-model axis": (lambda r: _scalar_axes(beta_path(r, 1, 2)),
                            r"run-2_beta\.dscalar\.nii: .*brain-model axis is missing"),
    "not a CIFTI file": (lambda r: beta_path(r, 2, 2).write_bytes(b"not nifti"),
                         r"run-2_beta\.dscalar\.nii: not a readable CIFTI file"),
    "missing run": (lambda r: events_path(r, 1, 1).unlink(),
                    r"sub-01_ses-imagenet01_task-imagenet_run-01_events\.tsv: run 1 missing"),
    "missing betas": (lambda r: shutil.rmtree(beta_path(r, 2, 2).parent),
                      r"ses-imagenet02_task-imagenet_run-2_beta\.dscalar\.nii: beta file"),
    "betas without events": (_extra_beta_folder, r"run-3: betas of run 3 but no events"),
    "missing label file": (lambda r: next(beta_path(r, 1, 1).parent.glob("*_label.txt")).unlink(),
                           r"run-1_label\.txt: file not found"),
    "events rows": (_drop_last_trial,
                    r"ses-imagenet02_task-imagenet_run-1_beta\.dscalar\.nii: 12 beta maps but "
                    r".*run-01_events\.tsv has 11 trials"),
    "label order": (_swap_labels, r"run-2_label\.txt: stimulus order differs .* at trial 3"),
    "NaN betas": (lambda r: _nan_beta(beta_path(r, 2, 1)),
                  r"run-1_beta\.dscalar\.nii: 1 non-finite cortical values"),
    "missing atlas": (lambda r: atlas_path(r).unlink(), r"MMP_mpmLR32k\.mat: Glasser atlas not"),
    "missing area": (_remove_v4_row, r"roilbl_mmp\.csv: no area named V4"),
    "events column": (_drop_column, r"run-01_events\.tsv: missing column\(s\) trial_type"),
    "missing pRF file": (lambda r: prf_path(r).unlink(),
                         r"ses-prf_task-prf_params\.dscalar\.nii: file not found"),
    "missing stimulus": (lambda r: next((r / "stimuli").rglob("*.JPEG")).unlink(),
                         r"\.JPEG: image file not found"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_dataset_names_the_file(nod_copy: Path, case: str) -> None:
    damage, message = MALFORMED[case]
    damage(nod_copy)
    with pytest.raises(InputError, match=message):
        load(nod_copy)


def test_bad_arguments(nod_root: Path) -> None:
    with pytest.raises(InputError, match=r"sub-02: unknown subject"):
        load_nod_subject(nod_root, 2, sessions=(1,), progress=False)
    with pytest.raises(InputError, match="normalization"):
        load(nod_root, normalization="session")
    for top_k in (0, -3, 2.5, "most"):
        with pytest.raises(InputError, match="top_k"):
            load(nod_root, top_k=top_k)
    with pytest.raises(InputError, match="sessions"):
        load(nod_root, sessions=(1, 1))
    with pytest.raises(InputError, match="atlas not found"):
        load(nod_root, atlas_dir=nod_root / "nowhere")


# --------------------------------------------------------------------------------------------
# Writer


def test_writer_is_deterministic_and_shares_a_root(tmp_path: Path) -> None:
    small = SIZES | {"n_sessions": 1, "trials_per_run": 4}
    first = simulate_nod_subject(tmp_path / "a", 2, seed=5, progress=False, **small)
    again = simulate_nod_subject(tmp_path / "b", 2, seed=5, progress=False, **small)
    other = simulate_nod_subject(tmp_path / "c", 2, seed=6, progress=False, **small)
    stem = "derivatives/ciftify/sub-02/results/ses-imagenet01_task-imagenet_run-2"
    path = f"{stem}/ses-imagenet01_task-imagenet_run-2_beta.dscalar.nii"
    a, b, c = (read_cifti(root / path)[0] for root in (first, again, other))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    events = "sub-02/ses-imagenet01/func/sub-02_ses-imagenet01_task-imagenet_run-01_events.tsv"
    assert (first / events).read_text() == (again / events).read_text()

    simulate_nod_subject(first, 3, seed=5, progress=False, **small)  # same cortex: shares
    both = [load_nod_subject(first, s, sessions=(1,), top_k=K, image_size=32, progress=False)
            for s in (2, 3)]
    assert both[0].n_images == both[1].n_images == 8
    assert not set(both[0].trials["stim_file"]) & set(both[1].trials["stim_file"])
    with pytest.raises(InputError, match="supportfiles: support files for another cortex"):
        simulate_nod_subject(first, 4, seed=5, progress=False, **(small | {"other_vertices": 3}))
    assert not (first / "sub-04").exists()
    with pytest.raises(InputError, match="trials per session"):
        simulate_nod_subject(tmp_path / "d", 1, n_runs=20, trials_per_run=60, progress=False)


def test_nod_split_sizes() -> None:
    split = make_splits(4000)
    assert (len(split.train), len(split.val), len(split.test)) == (3000, 400, 600)


def test_constant_runs_are_counted(nod_root: Path, nod_copy: Path) -> None:
    """A selected vertex whose betas are constant over a run is z = 0 there, and counted."""
    assert load(nod_root).data_notes("lh") == {"n_constant_vertex_runs": 0}
    selected = columns(load(nod_root), nod_root, "lh")[:3]
    path = beta_path(nod_copy, 1, 2)
    data, *axes = read_cifti(path)
    data[:, selected] = 7.0  # three selected lh vertices are flat in session 1, run 2
    resave(path, data, tuple(axes))
    subject = load(nod_copy)
    assert subject.data_notes("lh") == {"n_constant_vertex_runs": 3}
    assert subject.data_notes("rh") == {"n_constant_vertex_runs": 0}
    run_rows = (subject.trials["session"] == 1) & (subject.trials["run"] == 2)
    flat = subject.responses("lh")[run_rows.to_numpy()][:, :3]
    assert np.all(flat == 0)


def test_a_study_runs_on_the_nod_layout(nod_root: Path, tmp_path: Path, monkeypatch) -> None:
    """NOD as the study's own data: tuned on NOD V1, the tables name subjects subjNN."""
    from cortexcl.config import parse_config
    from cortexcl.study.runner import run_study

    monkeypatch.setenv("CORTEXCL_CACHE", str(tmp_path / "cache"))
    config = parse_config({
        "name": "nod", "seeds": [0], "backbone": {"weights": "none"},
        "methods": ["untuned", "cl"],
        "data": {"layout": "nod", "root": str(nod_root), "subjects": [1], "image_size": 64,
                 "nod": {"sessions": [1, 2], "top_k": None}},
        "selection": {"hemispheres": ["lh"], "rois": ["v1"], "min_vertices": 5},
        "tuning": {"cl": {"epochs": 1, "batch_size": 16}},
        "encoding": {"n_components": 8}, "evaluation": {"mutual_info": False}})
    assert config.selection.rois == ["v1"]  # checked against the data when read: V1
    _, report = run_study(config, tmp_path / "run", progress=False, announce=lambda _: None)
    assert report.ok
    table = pd.read_csv(tmp_path / "run" / "tables" / "encoding.csv")
    assert set(table["subject"]) == {"subj01"} and set(table["roi"]) == {"V1"}
    assert sorted(table["method"]) == ["cl", "untuned"]
    direct = load(nod_root, sessions=(1, 2), top_k=None)
    assert (table["n_vertices"] == direct.roi_indices("lh", "V1").size).all()
    assert (table["n_train"] + table["n_val"] + table["n_test"] == direct.n_images).all()
    assert table["mean_noise_ceiling"].between(0, 1).all()  # the simulator's ground truth
