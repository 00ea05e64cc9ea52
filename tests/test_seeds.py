"""Tuning seeds: a split seed apart from the replicates, their layout, tables and summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from cortexcl.errors import InputError
from cortexcl.evaluation.single_subject import comparison_table, seed_summary
from cortexcl.study.jobs import backbone_name, parse_backbone_name, plan_jobs
from cortexcl.study.runner import run_study
from cortexcl.tuning.checkpoints import BACKBONE, META
from study_helpers import fill_cache, study


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> Path:
    """The tiny study (untuned, CL, RT on lh V1v) with tuning seeds 3 and 5, run to the end."""
    cache = fill_cache(tmp_path_factory.mktemp("seeds-cache"))
    root = tmp_path_factory.mktemp("seeds") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORTEXCL_CACHE", str(cache))
        _, report = run_study(study(seeds=[3, 5]), root, progress=False,
                              announce=lambda _: None)
    assert report.ok
    return root


def test_config_separates_the_split_seed_from_the_tuning_seeds():
    config = study(split_seed=4, seeds=[1, 2])
    assert (config.split_seed, config.seeds) == (4, [1, 2])
    assert study().model_copy(update={"seeds": [0, 1, 2]}).seeds == [0, 1, 2]
    with pytest.raises(InputError, match="seed: replaced by split_seed .* and seeds"):
        study(seed=0)
    with pytest.raises(InputError, match="seeds: .*must differ"):
        study(seeds=[1, 1])
    with pytest.raises(InputError, match="seeds: give at least one tuning seed"):
        study(seeds=[])
    with pytest.raises(InputError, match="seeds: tuning seeds are non-negative"):
        study(seeds=[-1, 0])
    with pytest.raises(InputError, match="encoding.layers: layer 'features.2' given twice"):
        study(encoding={"layers": ["features.2", "features.2"]})


def test_two_seeds_plan_two_tuned_models_and_one_untuned_encoding():
    config = study(seeds=[0, 1], methods=["untuned", "cl", "rt"])
    jobs = plan_jobs(config, lambda *_: 40)
    keys = {job.key for job in jobs}
    for seed in (0, 1):
        for method in ("cl", "rt"):
            assert {f"tune/{method}/subj01/lh/V1v/seed-{seed}",
                    f"encode/{method}/subj01/lh/V1v/seed-{seed}"} <= keys
    assert [job.key for job in jobs if job.method == "untuned"] == [
        "encode/untuned/subj01/all/all"]
    # An encode waits for its own seed's model; the RT baseline of a pooled encode likewise.
    encode = next(job for job in jobs if job.key == "encode/cl/subj01/lh/V1v/seed-1")
    assert encode.depends_on == ("tune/cl/subj01/lh/V1v/seed-1",)
    folders = {job.output_dir(Path("run")) for job in jobs if job.kind == "tune"}
    assert Path("run/models/subj01/lh/V1v/cl/seed-1") in folders and len(folders) == 8


def test_backbone_names_carry_the_seed():
    name = backbone_name("cl", "subj01", "lh", "V1v", 2)
    assert name == "cl__subj01__lh__V1v__seed-2"
    assert parse_backbone_name(name) == {"method": "cl", "subject": "subj01",
                                         "hemisphere": "lh", "roi": "V1v", "seed": 2}
    assert parse_backbone_name("untuned")["seed"] is None


def test_two_seeds_give_two_models_and_one_untuned_result(two_seeds):
    root = two_seeds
    weights = {}
    for seed in (3, 5):
        model = root / "models/subj01/lh/V1v/cl" / f"seed-{seed}"
        assert json.loads((model / META).read_text())["seed"] == seed
        weights[seed] = load_file(model / BACKBONE)
        assert (root / "encoding/subj01/lh/V1v/cl" / f"seed-{seed}" / "summary.json").is_file()
    # Different seeds, different tuning (the heads' start and the batch order).
    assert any(not torch.equal(weights[3][k], weights[5][k]) for k in weights[3])
    untuned = sorted(p.parent.name for p in (root / "encoding").rglob("summary.json")
                     if "untuned" in p.parts)
    assert untuned == ["untuned"]  # V1v once (hV4 is below min_vertices)

    table = pd.read_csv(root / "tables" / "encoding.csv")
    v1v = table[table.roi == "V1v"]
    assert sorted(zip(v1v.method, v1v.seed.fillna(-1).astype(int), strict=True)) == [
        ("cl", 3), ("cl", 5), ("rt", 3), ("rt", 5), ("untuned", -1)]
    # The RT baseline of a CL result is the RT model of the same seed: identical p to RT's
    # own comparison with CL, in reverse.
    for seed in (3, 5):
        cl = v1v[(v1v.method == "cl") & (v1v.seed == seed)].iloc[0]
        rt = v1v[(v1v.method == "rt") & (v1v.seed == seed)].iloc[0]
        assert cl["delta_r_vs_rt"] == pytest.approx(cl["mean_r"] - rt["mean_r"], abs=1e-6)
        assert cl["delta_r_vs_untuned"] == pytest.approx(
            cl["mean_r"] - v1v[v1v.method == "untuned"].mean_r.iloc[0], abs=1e-6)

    seeds = pd.read_csv(root / "tables" / "seeds.csv")
    cl_seeds = seeds[seeds.method == "cl"].iloc[0]
    values = v1v[v1v.method == "cl"].mean_r.to_numpy()
    assert cl_seeds["n_seeds"] == 2
    assert cl_seeds["mean_r"] == pytest.approx(values.mean())
    assert cl_seeds["sd_r"] == pytest.approx(values.std(ddof=1))
    assert (cl_seeds["min_r"], cl_seeds["max_r"]) == pytest.approx((values.min(), values.max()))
    # Groups average a subject's seeds before anything else: one value per subject.
    groups = pd.read_csv(root / "tables" / "groups.csv")
    early = groups[(groups.group == "early") & (groups.method == "cl")].iloc[0]
    assert early["mean_r"] == pytest.approx(values.mean())
    assert early["n_subjects"] == 1
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seeds"] == {"split": 0, "tuning": [3, 5]}


def test_seed_summary_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    delta = rng.normal(0.02, 0.01, size=4)
    rows = [{"subject": "subj01", "hemisphere": "lh", "roi": "V1v", "method": "cl",
             "seed": seed, "mean_r": 0.3 + d, "delta_r_vs_untuned": d,
             "p_holm_vs_untuned": p} for seed, d, p in zip(range(4), delta,
                                                             [0.01, 0.2, 0.04, 0.5], strict=True)]
    rows.append({"subject": "subj01", "hemisphere": "lh", "roi": "V1v", "method": "untuned",
                 "seed": pd.NA, "mean_r": 0.3})
    table = pd.DataFrame(rows).astype({"seed": "Int64"})
    summary = seed_summary(table)
    assert summary["method"].tolist() == ["cl"]
    row = summary.iloc[0]
    half = stats.t.ppf(0.975, 3) * delta.std(ddof=1) / np.sqrt(4)
    assert row["delta_r_vs_untuned"] == pytest.approx(delta.mean())
    assert row["sd_delta_r_vs_untuned"] == pytest.approx(delta.std(ddof=1))
    assert (row["seed_ci_low_vs_untuned"], row["seed_ci_high_vs_untuned"]) == pytest.approx(
        (delta.mean() - half, delta.mean() + half))
    assert row["n_significant_vs_untuned"] == 2
    assert row["seed_unit"] == "tuning seed"
    one = seed_summary(table[table.seed.isna() | (table.seed == 0)])
    assert one.iloc[0]["n_seeds"] == 1 and np.isnan(one.iloc[0]["seed_ci_low_vs_untuned"])
    assert seed_summary(table[table.method == "untuned"]).empty


def test_terminal_table_shows_the_spread_over_seeds():
    rows = [{"subject": "subj01", "hemisphere": "lh", "roi": "V1v", "method": "cl", "seed": s,
             "mean_r": r, "pct_improved_vs_untuned": 60.0, "delta_r_vs_untuned": d,
             "p_vs_untuned": p, "p_holm_vs_untuned": p}
            for s, r, d, p in ((0, 0.31, 0.01, 0.01), (1, 0.35, 0.05, 0.03))]
    rows.append({"subject": "subj01", "hemisphere": "lh", "roi": "V1v", "method": "untuned",
                 "seed": None, "mean_r": 0.30})
    wide = comparison_table(pd.DataFrame(rows))
    row = wide.iloc[0]
    assert row["cl"] == pytest.approx(0.33) and row["Δr (untuned)"] == pytest.approx(0.03)
    assert row["Δr SD (untuned)"] == pytest.approx(np.std([0.01, 0.05], ddof=1))
    assert row["max p Holm (untuned)"] == pytest.approx(0.03)
    assert row["seeds p<.05 (untuned)"] == "2/2"
    assert "p (untuned)" not in wide
