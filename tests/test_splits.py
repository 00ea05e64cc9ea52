"""Tests of the seeded permutation and the clean / published splits (docs/method.md §1.3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cortexcl.data.splits import Split, make_splits, permutation
from cortexcl.errors import InputError

# n: (clean train, val, test), (paper tuning train, held out, pool, fold val, fold train, never)
TABLE = {
    9841: ((7380, 984, 1477), (8364, 1477, 8364, 1672, 6692, 4)),
    9082: ((6811, 908, 1363), (7719, 1363, 7719, 1543, 6176, 4)),
    8779: ((6584, 878, 1317), (7462, 1317, 7461, 1492, 5969, 1)),
}


@pytest.mark.parametrize(("n", "seed"), [(9841, 0), (9082, 0), (8779, 0), (50, 3)])
def test_permutation_matches_seeded_global_generator(n, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        expected = torch.randperm(n).numpy()
    order = permutation(n, seed)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(order, expected)


def test_permutation_leaves_global_state_alone():
    state = torch.random.get_rng_state()
    permutation(100, 5)
    assert torch.equal(state, torch.random.get_rng_state())
    assert not np.array_equal(permutation(100, 0), permutation(100, 1))


@pytest.mark.parametrize("n", sorted(TABLE))
def test_clean_split_table(n):
    (n_train, n_val, n_test), _ = TABLE[n]
    split = make_splits(n)
    order = permutation(n, 0)
    assert (split.train.size, split.val.size, split.test.size) == (n_train, n_val, n_test)
    np.testing.assert_array_equal(split.train, order[:n_train])
    np.testing.assert_array_equal(split.val, order[n_train : n_train + n_val])
    np.testing.assert_array_equal(split.test, order[n_train + n_val :])
    assert split.protocol == "clean" and split.seed == 0 and split.folds == ()
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.train, split.val, split.test])), np.arange(n)
    )


@pytest.mark.parametrize("n", sorted(TABLE))
def test_paper_split_table(n):
    _, (n_tuning, n_held_out, n_pool, n_fold_val, n_fold_train, n_never) = TABLE[n]
    split = make_splits(n, protocol="paper")
    order = permutation(n, 0)
    assert (split.train.size, split.val.size, split.test.size) == (n_tuning, 0, n_held_out)
    np.testing.assert_array_equal(split.train, order[:n_tuning])
    np.testing.assert_array_equal(split.test, order[n_tuning:])
    assert len(split.folds) == 5
    pool = order[:n_pool]
    validated = []
    for k, (fold_train, fold_val) in enumerate(split.folds):
        assert (fold_val.size, fold_train.size) == (n_fold_val, n_fold_train)
        np.testing.assert_array_equal(fold_val, pool[k * n_fold_val : (k + 1) * n_fold_val])
        assert not np.intersect1d(fold_train, fold_val).size
        np.testing.assert_array_equal(
            np.sort(np.concatenate([fold_train, fold_val])), np.sort(pool)
        )
        validated.append(fold_val)
    # the pool lies inside the tuning split, never in the held-out images
    assert np.isin(pool, split.train).all() and not np.isin(pool, split.test).any()
    never = np.setdiff1d(pool, np.concatenate(validated))
    assert never.size == n_never
    np.testing.assert_array_equal(np.sort(never), np.sort(pool[5 * n_fold_val :]))


@pytest.mark.parametrize("n", sorted(TABLE))
def test_clean_test_part_is_the_published_held_out_set(n):
    clean, paper = make_splits(n), make_splits(n, protocol="paper")
    np.testing.assert_array_equal(clean.test, paper.test)
    np.testing.assert_array_equal(np.concatenate([clean.train, clean.val]), paper.train)


def test_general_fractions_and_small_n():
    split = make_splits(10, seed=1, fractions=(0.7, 0.2, 0.1))
    assert (split.train.size, split.val.size, split.test.size) == (7, 2, 1)
    split = make_splits(1)
    assert (split.train.size, split.val.size, split.test.size) == (0, 0, 1)
    assert make_splits(40, seed=2) == make_splits(40, seed=2)
    assert make_splits(40, seed=2) != make_splits(40, seed=3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_images": 0},
        {"n_images": 2.5},
        {"n_images": 10, "protocol": "cv"},
        {"n_images": 10, "fractions": (0.5, 0.2, 0.2)},
        {"n_images": 10, "fractions": (1.2, -0.1, -0.1)},
    ],
)
def test_make_splits_rejects_bad_arguments(kwargs):
    with pytest.raises(InputError):
        make_splits(**kwargs)


@pytest.mark.parametrize("protocol", ["clean", "paper"])
def test_save_load_round_trip(tmp_path, protocol):
    split = make_splits(123, seed=7, protocol=protocol)
    path = tmp_path / "splits" / "subj01.json"
    split.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["subj01.json"]
    loaded = Split.load(path)
    assert loaded == split and loaded.to_dict() == split.to_dict()
    assert loaded.protocol == protocol and loaded.seed == 7
    for a, b in zip(loaded.folds, split.folds, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    record = json.loads(path.read_text())
    assert record["n_images"] == 123 and record["train"] == split.train.tolist()
    assert Split.from_dict(record) == split
    assert loaded.train.dtype == np.int64 and not loaded.train.flags.writeable


def test_load_rejects_missing_or_malformed_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Split.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        Split.load(bad)
    record = make_splits(20).to_dict()
    del record["test"]
    bad.write_text(json.dumps(record))
    with pytest.raises(InputError, match="bad.json: not a split record"):
        Split.load(bad)
    record = make_splits(20).to_dict()
    record["val"] = record["train"][:2]
    bad.write_text(json.dumps(record))
    with pytest.raises(InputError, match="overlap"):
        Split.load(bad)
    record["protocol"] = "other"
    with pytest.raises(InputError, match="protocol"):
        Split.from_dict(record)
