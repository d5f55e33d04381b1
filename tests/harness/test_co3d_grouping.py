"""CO3D protocols aggregate pose AUC per category as VGGT's test_co3d.py does (pairs pooled within a category, then
the mean over categories); other protocols keep per-scene aggregation. Wired from the protocol to the runner's
aggregate through RealComponents.scene_groups."""

from __future__ import annotations

import pytest
import torch

from ptq3d.datasets import get_protocol
from ptq3d.datasets.base import SceneSample
from ptq3d.harness.real import RealComponents
from ptq3d.results.records import ProtocolRef


def _scene(name: str) -> SceneSample:
    s = 2
    return SceneSample(
        images=torch.zeros(s, 3, 14, 14),
        depth=torch.zeros(s, 14, 14),
        valid_mask=torch.zeros(s, 14, 14, dtype=torch.bool),
        intrinsics=torch.eye(3).expand(s, 3, 3).clone(),
        extrinsics=torch.eye(3, 4).expand(s, 3, 4).clone(),
        meta={"dataset": "co3d", "scene": name, "frame_ids": [0, 1]},
    )


def test_co3d_protocols_group_by_category_and_are_versioned():
    comp = RealComponents()
    scenes = [_scene("apple/1"), _scene("apple/2"), _scene("bench/7")]
    assert comp.scene_groups(ProtocolRef("vggt-co3d"), scenes) == ["apple", "apple", "bench"]
    assert get_protocol("vggt-co3d").version == 2
    assert comp.scene_groups(ProtocolRef("pi3-7scenes-sparse"), scenes) is None


def test_grouped_auc_is_the_mean_over_categories_of_pooled_pairs():
    comp = RealComponents()
    # apple: 2 sequences of 45 pairs with AUC 1.0 and 0.5 -> pooled 0.75; bench: 1 sequence at 0.25
    per_scene = [
        {"pose.auc@30": 1.0, "pose.n_pairs": 45.0},
        {"pose.auc@30": 0.5, "pose.n_pairs": 45.0},
        {"pose.auc@30": 0.25, "pose.n_pairs": 45.0},
    ]
    grouped = comp.aggregate(per_scene, ["pose.auc@30"], groups=["apple", "apple", "bench"])
    assert grouped["pose.auc@30"][0] == pytest.approx((0.75 + 0.25) / 2)
    per_sequence = comp.aggregate(per_scene, ["pose.auc@30"])
    assert per_sequence["pose.auc@30"][0] == pytest.approx((1.0 + 0.5 + 0.25) / 3)
