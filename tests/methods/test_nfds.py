"""NFDS calibration-set builder (ptq3d.calibration.nfds): the filter removes injected outlier scenes (z-score and
IQR rules), k-means clusters are diverse and every cluster is sampled, meta says what was kept and why."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from small_models import small_vggt
from toy_model import ToyGeometryModel, toy_scenes

from ptq3d.calibration.nfds import (
    deep_blocks,
    frame_similarity,
    iqr_filter,
    kmeans,
    pick_per_cluster,
    zscore_filter,
)
from ptq3d.datasets.synthetic import generate_scene
from ptq3d.errors import UserError
from ptq3d.methods import get_calibration_builder


def corrupted(scene, k):
    """An over-exposed copy (x6): a sensor/decoding failure whose activations are outliers."""
    return dataclasses.replace(scene, images=scene.images * 6, meta={**scene.meta, "scene": f"outlier-{k}"})


@pytest.fixture(scope="module")
def toy_pool():
    pool = toy_scenes(12, seed=3)
    pool.insert(4, corrupted(pool[0], 1))
    pool.insert(9, corrupted(pool[1], 2))
    return pool


def test_zscore_rule_on_arrays():
    rng = np.random.default_rng(0)
    means, variances = rng.normal(0, 1, (20, 3)), rng.normal(5, 0.1, (20, 3))
    means[[3, 11]] += 8  # injected
    keep, score, thr = zscore_filter(means, variances, drop_fraction=0.1)
    assert set(np.nonzero(~keep)[0]) == {3, 11} and (score[~keep] > thr).all()
    keep, _, _ = zscore_filter(means, variances, drop_fraction=0.0)
    assert keep.all()


def test_iqr_rule_on_arrays_per_group():
    rng = np.random.default_rng(1)
    means, variances = rng.normal(0, 1, (12, 2)), rng.normal(5, 0.1, (12, 2))
    variances[7, 1] = 9.0
    means[0, 0] = 40.0  # in a group of 3: too small to be filtered (the code's >= 4 rule)
    groups = ["a"] * 9 + ["b"] * 3
    groups[0] = "b"
    groups[9] = "a"
    keep, reasons = iqr_filter(means, variances, groups)
    assert not keep[7] and "std" in reasons[7][0] and "above" in reasons[7][0]
    assert keep[0]


def test_iqr_fences_on_std_as_the_authors_code():
    # a transcription of make_calibation.py's rule on one deep layer: fences Q1 - 1.5 IQR, Q3 + 1.5 IQR of the
    # per-sample standard deviation. The 9 variances put sample 8 inside the std fences but outside the
    # variance fences, so the two statistics disagree on it.
    var = np.array([1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0, 9.0])
    std = np.sqrt(var)
    q1, q3 = np.percentile(std, [25, 75])
    assert q1 - 1.5 * (q3 - q1) <= std[8] <= q3 + 1.5 * (q3 - q1)  # kept by the code's rule
    vq1, vq3 = np.percentile(var, [25, 75])
    assert var[8] > vq3 + 1.5 * (vq3 - vq1)  # the variance rule would drop it
    keep, reasons = iqr_filter(np.zeros((9, 1)), var[:, None], ["a"] * 9)
    assert keep.all(), reasons


@pytest.mark.parametrize("rule", ["zscore", "iqr"])
def test_filter_removes_injected_outlier_scenes(toy_pool, rule):
    torch.manual_seed(0)  # the toy's 1-D parameters come from the global generator
    model = ToyGeometryModel(seed=0)
    cs = get_calibration_builder("nfds")(
        toy_pool, 4, seed=0, model=model, filter=rule, drop_fraction=2 / len(toy_pool), num_clusters=2
    )
    dropped = {d["scene"] for d in cs.meta["filter"]["dropped"]}
    if rule == "zscore":  # p = 2 / N: exactly the two injected scenes have the largest scores
        assert dropped == {"outlier-1", "outlier-2"}
    else:  # Tukey fences on 4 statistics also catch the odd clean scene
        assert {"outlier-1", "outlier-2"} <= dropped and len(dropped) <= 4
    assert all(d["why"] for d in cs.meta["filter"]["dropped"])
    chosen = {s.meta["scene"] for s in cs.samples}
    assert not chosen & dropped and len(chosen) == 4
    # without the filter they are candidates like any other scene
    cs_none = get_calibration_builder("nfds")(toy_pool, 4, seed=0, model=model, filter="none", num_clusters=2)
    assert cs_none.meta["filter"]["kept"] == len(toy_pool)


def test_kmeans_and_per_cluster_picks():
    rng = np.random.default_rng(0)
    sizes = (10, 3, 2)
    x = np.concatenate([rng.normal(c, 0.01, (n, 2)) for c, n in zip((0.0, 1.0, 2.0), sizes, strict=True)])
    truth = np.repeat([0, 1, 2], sizes)
    _, lab = kmeans(x, 3, seed=0)
    # the same partition up to label names
    assert len({(a, b) for a, b in zip(lab, truth, strict=True)}) == 3
    picks = pick_per_cluster(lab, 6, seed=0)
    assert len(set(picks)) == 6 and sorted(np.bincount(truth[picks])) == [2, 2, 2]
    picks = pick_per_cluster(lab, 9, seed=0)  # the 2-member cluster is exhausted, the others top up
    assert np.bincount(truth[picks]).tolist() == [4, 3, 2]
    _, lab2 = kmeans(x, 3, seed=0)
    assert (lab == lab2).all()


def test_frame_similarity_features():
    a = torch.randn(4, 6, 8)
    a[2] = a[0] * 3  # same direction as frame 0
    f = frame_similarity(a, "frame_cosine")
    assert f.shape == (3,) and abs(f[1] - 1) < 1e-9
    g = frame_similarity(a, "token_cosine")
    assert g.shape == (3,) and abs(g[1] - 1) < 1e-9


def test_clusters_diverse_on_vggt():
    """Static scenes (all frames identical: similarity 1) are a minority of the pool; NFDS with K=2 still
    samples them, and the meta records features, clusters and selection for every pool scene."""
    model = small_vggt()
    pool = [generate_scene(s, num_frames=3, height=56, width=56) for s in range(8)]
    for k in range(3):
        sc = generate_scene(100 + k, num_frames=3, height=56, width=56)
        pool.append(
            dataclasses.replace(
                sc,
                images=sc.images[:1].expand(3, -1, -1, -1).clone(),
                meta={**sc.meta, "scene": f"static-{k}"},
            )
        )
    assert deep_blocks(model, "aggregator", 1 / 6) == [
        "aggregator.frame_blocks.1",
        "aggregator.global_blocks.1",
    ]
    cs = get_calibration_builder("nfds")(pool, 4, seed=0, model=model, filter="none", num_clusters=2)
    per = cs.meta["per_scene"]
    static_clusters = {r["cluster"] for r in per if r["scene"].startswith("static")}
    assert len(static_clusters) == 1  # similarity 1 to the first frame: one cluster
    assert all(abs(v - 1) < 1e-6 for r in per if r["scene"].startswith("static") for v in r["feature"])
    chosen_clusters = [r["cluster"] for r in per if r["selected"]]
    assert sorted(chosen_clusters) == [0, 0, 1, 1]  # clusters take turns
    assert any(r["selected"] and r["feature"][0] > 0.999 for r in per)  # a static-like scene is in
    spread = np.ptp([r["feature"][0] for r in per if r["selected"]])
    assert spread > 0.5 * np.ptp([r["feature"][0] for r in per])
    assert sorted(r["index"] for r in per if r["selected"]) == [r["index"] for r in cs.meta["selected"]]
    json.dumps(cs.describe())  # the manifest can carry it
    # determinism
    again = get_calibration_builder("nfds")(pool, 4, seed=0, model=model, filter="none", num_clusters=2)
    assert again.hash == cs.hash and cs.builder == "nfds"


def test_errors(toy_pool):
    build = get_calibration_builder("nfds")
    with pytest.raises(UserError, match="model="):
        build(toy_pool, 4)
    model = ToyGeometryModel(seed=0)
    with pytest.raises(UserError, match="pass the 'zscore' filter"):
        build(toy_pool, len(toy_pool) - 1, model=model)
    with pytest.raises(UserError, match="NFDS filter"):
        build(toy_pool, 4, model=model, filter="mad")
    with pytest.raises(UserError, match="exceeds the pool"):
        build(toy_pool, 99, model=model)
