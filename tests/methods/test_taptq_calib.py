"""TAPTQ's coarse-to-fine calibration builder: statistics, filter, representative selection, the builder on small
VGGT and Pi3 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from taptq_models import scenes, small_pi3, small_vggt

from ptq3d.calibration.taptq_builder import coarse_filter, layer_variance, select_representatives, tail_ratio
from ptq3d.errors import ConfigError
from ptq3d.methods import get_calibration_builder

torch.set_num_threads(1)


def test_statistics_on_constructed_layers():
    base = torch.ones(2, 3, 4)
    assert layer_variance([base, base, base]) == 0.0
    assert layer_variance([base, 3 * base]) == pytest.approx(1.0)  # values 1, 3 -> variance 1
    spike = torch.zeros(100)
    spike[0] = 10
    assert tail_ratio([spike]) > tail_ratio([torch.linspace(-1, 1, 100)])


def test_coarse_filter_drops_the_least_stable():
    scores = [0.1, 5.0, 0.2, 0.3, 9.0, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert coarse_filter(scores, 0.8, 2) == [0, 2, 3, 5, 6, 7, 8, 9]
    assert coarse_filter(scores, 0.1, 3) == [0, 2, 3]  # never fewer than the budget


@pytest.mark.parametrize("selection", ["medoid", "proportional"])
def test_representatives_cover_the_clusters(selection):
    """Four well-separated blobs of sizes 8, 6, 4, 2: a budget of 4 takes one scene per blob (medoid); the
    proportional rule shares slots by size."""
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    sizes = [8, 6, 4, 2]
    emb = np.concatenate([c + 0.1 * rng.standard_normal((n, 4)) for c, n in zip(centres, sizes, strict=True)])
    blob = np.repeat(np.arange(4), sizes)
    sel, _ = select_representatives(emb, 4, seed=0, selection=selection)
    if selection == "medoid":
        assert sorted(blob[sel].tolist()) == [0, 1, 2, 3]
    else:  # largest remainders of 4 * (8, 6, 4, 2) / 20 = (1.6, 1.2, 0.8, 0.4)
        assert np.bincount(blob[sel], minlength=4).tolist() == [2, 1, 1, 0]
        sel, _ = select_representatives(emb, 10, seed=0, num_clusters=4, selection=selection)
        assert np.bincount(blob[sel], minlength=4).tolist() == [4, 3, 2, 1]
    # medoid: the member nearest its blob's centroid
    sel, _ = select_representatives(emb, 4, seed=1, selection="medoid")
    for i in sel:
        members = np.where(blob == blob[i])[0]
        d = np.linalg.norm(emb[members] - emb[members].mean(0), axis=1)
        assert i == members[np.argmin(d)]


@pytest.mark.parametrize("make", [small_vggt, small_pi3], ids=["vggt", "pi3"])
def test_builder_on_small_models(make):
    model = make(0)
    pool = scenes(6, first_seed=10, frames=2)
    build = get_calibration_builder("taptq")
    cs = build(pool, 3, seed=0, model=model, config={"keep_ratio": 0.8}, source="synthetic")
    again = build(pool, 3, seed=0, model=model, config={"keep_ratio": 0.8})
    assert len(cs) == 3 and cs.hash == again.hash and cs.builder == "taptq"
    meta = cs.describe()["meta"]
    assert len(meta["scores"]) == 6 and len(meta["kept"]) == 5 and meta["source"] == "synthetic"
    worst = int(np.argmax(meta["scores"]))
    assert worst not in meta["kept"] and set(meta["selected"]) <= set(meta["kept"])
    assert [s.meta["scene"] for s in cs.samples] == [pool[i].meta["scene"] for i in meta["selected"]]


def test_builder_errors():
    pool = scenes(3, frames=2)
    build = get_calibration_builder("taptq")
    with pytest.raises(ConfigError, match="needs the FP model"):
        build(pool, 2)
    model = small_vggt(0)
    with pytest.raises(ConfigError, match="different frame counts"):
        build([*pool, *scenes(1, frames=3)], 2, model=model)
    with pytest.raises(ConfigError, match="selection"):
        build(pool, 2, model=model, config={"selection": "random"})
