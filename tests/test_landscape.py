"""Model landscape (method §6): Bhattacharyya distances, InPCA, MDS, and the probe figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexcl.errors import InputError
from cortexcl.evaluation.landscape import (
    ORACLE,
    bhattacharyya_distances,
    inpca,
    kruskal_stress,
    mds,
)
from cortexcl.report.probe_figures import (
    accuracy_matrix,
    accuracy_table,
    landscape_scatter,
    model_group,
)


def _probabilities(n_models: int, n_images: int = 40, n_classes: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {f"m{i}": rng.dirichlet(np.full(n_classes, 0.4), size=n_images)
            for i in range(n_models)}


def _reference_distance(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """d_B by a double loop over images and classes (clip at eps, renormalise)."""
    p = np.clip(p, eps, None)
    q = np.clip(q, eps, None)
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    total = 0.0
    for n in range(p.shape[0]):
        total += np.log(sum(np.sqrt(p[n, c] * q[n, c]) for c in range(p.shape[1])))
    return -total / p.shape[0]


def _pairwise_squared(points: np.ndarray) -> np.ndarray:
    return ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)


def test_bhattacharyya_matches_double_loop_and_is_symmetric():
    probabilities = _probabilities(4)
    probabilities["m1"][:5, :3] = 0.0  # exact zeros are clipped
    probabilities["m1"] /= probabilities["m1"].sum(1, keepdims=True)
    distances = bhattacharyya_distances(probabilities, block_rows=7)
    assert list(distances.index) == list(distances.columns) == ["m0", "m1", "m2", "m3"]
    for u in probabilities:
        for v in probabilities:
            expected = 0.0 if u == v else _reference_distance(probabilities[u], probabilities[v])
            assert distances.loc[u, v] == pytest.approx(expected, rel=1e-10, abs=1e-12)
    np.testing.assert_array_equal(distances.to_numpy(), distances.to_numpy().T)
    assert (distances.to_numpy()[~np.eye(4, dtype=bool)] > 0).all()
    # The block size changes nothing.
    pd.testing.assert_frame_equal(distances, bhattacharyya_distances(probabilities), rtol=1e-12)


def test_identical_models_are_at_zero_distance():
    probabilities = _probabilities(2)
    probabilities["copy"] = probabilities["m0"].copy()
    distances = bhattacharyya_distances(probabilities)
    assert abs(distances.loc["m0", "copy"]) < 1e-12
    assert distances.loc["m1", "copy"] == pytest.approx(distances.loc["m1", "m0"], rel=1e-12)


def test_oracle_formula():
    probabilities = _probabilities(3, n_images=25)
    labels = np.random.default_rng(1).integers(0, 7, 25)
    distances = bhattacharyya_distances(probabilities, labels)
    assert list(distances.index)[-1] == ORACLE
    for name, p in probabilities.items():
        expected = -np.mean(np.log(p[np.arange(25), labels])) / 2
        assert distances.loc[name, ORACLE] == pytest.approx(expected, rel=1e-9)
        assert distances.loc[ORACLE, name] == distances.loc[name, ORACLE]
    assert distances.loc[ORACLE, ORACLE] == 0
    # A model that puts all its mass on the true labels sits at the oracle.
    perfect = np.eye(7)[labels]
    distances = bhattacharyya_distances({"perfect": perfect, **probabilities}, labels)
    assert abs(distances.loc["perfect", ORACLE]) < 1e-9


def test_bad_probabilities_are_input_errors():
    with pytest.raises(InputError, match="same"):
        bhattacharyya_distances({"a": np.full((3, 2), 0.5), "b": np.full((4, 2), 0.5)})
    with pytest.raises(InputError, match="labels"):
        bhattacharyya_distances({"a": np.full((3, 2), 0.5)}, labels=np.array([0, 1, 2]))


def test_inpca_recovers_a_euclidean_configuration():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(9, 2)) * [3.0, 1.0]
    distances = _pairwise_squared(points)
    embedding = inpca(pd.DataFrame(distances, index=list("abcdefghi"), columns=list("abcdefghi")))
    assert embedding.names == tuple("abcdefghi")
    assert embedding.coords.shape == (9, 2)
    np.testing.assert_allclose(_pairwise_squared(embedding.coords), distances, atol=1e-9)
    assert (embedding.eigenvalues > 0).all()
    assert embedding.captured == pytest.approx(1.0)
    centred = points - points.mean(0)
    np.testing.assert_allclose(np.sort(embedding.eigenvalues),
                               np.sort(np.linalg.eigvalsh(centred.T @ centred)), rtol=1e-9)


def test_inpca_keeps_time_like_components():
    # d = Δx² − Δt²: a Minkowski configuration, not embeddable in a Euclidean space.
    rng = np.random.default_rng(1)
    space, time = rng.normal(size=(8, 1)) * 2.0, rng.normal(size=(8, 1))
    distances = _pairwise_squared(space) - _pairwise_squared(time)
    embedding = inpca(distances)
    assert sorted(np.sign(embedding.eigenvalues)) == [-1, 1]
    signs = np.sign(embedding.eigenvalues)
    rebuilt = sum(s * _pairwise_squared(embedding.coords[:, [k]]) for k, s in enumerate(signs))
    np.testing.assert_allclose(rebuilt, distances, atol=1e-9)
    assert embedding.captured == pytest.approx(1.0)
    assert embedding.explained[0] >= embedding.explained[1]


def test_inpca_of_bhattacharyya_distances_orders_by_magnitude():
    distances = bhattacharyya_distances(_probabilities(6), labels=np.zeros(40, int))
    embedding = inpca(distances, n_components=7)
    magnitudes = np.abs(embedding.eigenvalues)
    assert (np.diff(magnitudes) <= 1e-12).all()
    assert embedding.captured == pytest.approx(1.0)
    np.testing.assert_allclose(np.cumsum(embedding.explained)[-1], 1.0)


@pytest.mark.parametrize("kind", ["metric", "nonmetric", "classical"])
def test_mds_variants(kind):
    distances = bhattacharyya_distances(_probabilities(6))
    embedding = mds(distances, kind=kind, seed=0)
    assert embedding.coords.shape == (6, 2)
    assert kind in embedding.variant and "sqrt(d_B)" in embedding.variant
    assert 0 <= embedding.stress < 1
    assert np.array_equal(mds(distances, kind=kind, seed=0).coords, embedding.coords)


def test_classical_mds_recovers_euclidean_distances():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(7, 2))
    squared = _pairwise_squared(points)  # sqrt(d) are then Euclidean distances
    embedding = mds(squared, kind="classical")
    np.testing.assert_allclose(_pairwise_squared(embedding.coords), squared, atol=1e-9)
    assert embedding.stress == pytest.approx(0.0, abs=1e-6)
    assert kruskal_stress(points, np.sqrt(squared)) == pytest.approx(0.0, abs=1e-12)
    metric = mds(squared, kind="metric", seed=0)
    assert metric.stress < 0.05


def test_model_groups():
    assert model_group("cl", "lh", "V1v") == "Early-L"
    assert model_group("pooled-avg", "rh", "hV4") == "Early-R"
    assert model_group("cl", "rh", "V2d", fine=True) == "V2-R"
    assert model_group("cl", "lh", "V1v", fine=True) == "V1v-L"
    assert model_group("cl", "lh", "FFA-1") == "Late-Face"
    assert model_group("cl", "rh", "mTL-words") == "Late-Word"
    assert model_group("cl", "lh", "RSC") == "Late-Place"
    assert model_group("rt", "lh", "EBA") == "Late-Body"
    assert model_group("untuned") == "Untuned"
    assert model_group(ORACLE) == "Oracle"
    with pytest.raises(InputError):
        model_group("cl", "lh", "early")


def _accuracy_long_table() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for subject in (1, 2, 3):
        for hemisphere in ("lh", "rh"):
            for roi in ("V1v", "FFA-1"):
                rows.append((f"s{subject}-{hemisphere}-{roi}", subject, hemisphere, roi, "cl",
                             rng.uniform(0.4, 0.6)))
    for hemisphere in ("lh", "rh"):
        for roi in ("V1v", "FFA-1"):
            rows.append((f"avg-{hemisphere}-{roi}", None, hemisphere, roi, "pooled-avg", 0.5))
    rows.append(("untuned", None, None, None, "untuned", 0.56))
    return pd.DataFrame(rows, columns=["name", "subject", "hemisphere", "roi", "method", "top1"])


def test_accuracy_table_layout():
    table = _accuracy_long_table()
    matrix = accuracy_table(table)
    assert list(matrix.index) == [("lh", "V1v"), ("lh", "FFA-1"), ("rh", "V1v"), ("rh", "FFA-1")]
    assert list(matrix.columns) == ["S1", "S2", "S3", "mean", "pooled avg", "untuned"]
    cl = table[(table["method"] == "cl") & (table["hemisphere"] == "rh") & (table["roi"] == "V1v")]
    assert matrix.loc[("rh", "V1v"), "mean"] == pytest.approx(cl["top1"].mean())
    assert (matrix["untuned"] == 0.56).all()
    assert (matrix["pooled avg"] == 0.5).all()


def test_figures_write_pngs(tmp_path):
    table = _accuracy_long_table()
    path = accuracy_matrix(table, tmp_path / "accuracy.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"

    rng = np.random.default_rng(3)
    names = list(table["name"])
    labels = rng.integers(0, 7, 40)
    probabilities = {name: rng.dirichlet(np.full(7, 0.5), size=40) for name in names}
    distances = bhattacharyya_distances(probabilities, labels)
    groups = {row.name: model_group(row.method, row.hemisphere, row.roi)
              for row in table.itertuples()}
    groups[ORACLE] = "Oracle"
    accuracy = dict(zip(table["name"], table["top1"], strict=True))
    for embedding, name in ((inpca(distances), "inpca.png"),
                            (mds(distances, kind="metric"), "mds.png")):
        path = landscape_scatter(embedding, accuracy, groups, tmp_path / name)
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
