"""RealComponents' per-process memos: the FP model, protocol scenes and calibration sets are reused across
cells only while they are provably the same; calibration frames and builder options reach the builder."""

from __future__ import annotations

import pytest
import torch

from ptq3d.errors import ConfigError, UserError
from ptq3d.harness import real
from ptq3d.harness.real import RealComponents
from ptq3d.results.records import CalibRef, ModelRef, ProtocolRef


@pytest.fixture
def comp():
    real.clear_memos()
    yield RealComponents()
    real.clear_memos()


def test_the_fp_model_is_reused_until_it_is_modified(comp):
    ref = ModelRef("vggt-tiny")  # random init: the runner seeds torch with init_seed before loading
    torch.manual_seed(0)
    a = comp.load_model(ref, "cpu")
    h = comp.model_hash(a)
    assert comp.load_model(ref, "cpu") is a and comp.model_hash(a) == h
    weight = next(iter(a.module.parameters()))
    with torch.no_grad():
        weight.data[0] += 1.0  # a write through .data: no version bump, still detected
    assert comp.model_hash(a) != h  # the cached content hash is not trusted after the change
    torch.manual_seed(0)
    b = comp.load_model(ref, "cpu")
    assert b is not a and comp.model_hash(b) == h  # a fresh copy of the checkpoint
    handle = b.module.register_forward_hook(lambda *args: None)  # a hook left behind
    assert comp.load_model(ref, "cpu") is not b
    handle.remove()


def test_scenes_are_memoized_per_protocol_and_limit(comp):
    one = comp.load_scenes(ProtocolRef("synthetic-smoke", limit=1))
    two = comp.load_scenes(ProtocolRef("synthetic-smoke"))
    assert len(one) == 1 and len(two) == 2
    again = comp.load_scenes(ProtocolRef("synthetic-smoke"))
    assert again is not two and all(x is y for x, y in zip(again, two, strict=True))  # same scenes, new list


def test_calibration_frames_options_and_memo(comp):
    model = comp.load_model(ModelRef("vggt-tiny"), "cpu")
    pool = comp.load_scenes(ProtocolRef("synthetic-calib", limit=4))
    ref = CalibRef(
        "nfds",
        "synthetic-calib",
        num_scenes=2,
        seed=0,
        frames=2,
        options={"num_clusters": 2, "filter": "none"},
    )
    cs = comp.build_calibration(ref, pool, model)
    assert len(cs) == 2 and all(s.num_frames == 2 for s in cs.samples)
    assert cs.meta["config"]["num_clusters"] == 2 and cs.meta["config"]["filter"] == "none"
    assert comp.build_calibration(ref, pool, model) is cs  # memoized
    other = CalibRef("random", "synthetic-calib", num_scenes=2, seed=1, frames=2)
    assert comp.build_calibration(other, pool, model) is not cs
    with pytest.raises(ConfigError, match="frames = 9 but scene"):
        comp.build_calibration(CalibRef("random", "synthetic-calib", num_scenes=2, frames=9), pool, model)
    with pytest.raises(ConfigError, match="'random' takes no options"):
        comp.build_calibration(
            CalibRef("random", "synthetic-calib", num_scenes=2, options={"k": 1}), pool, model
        )


def test_builder_options_are_checked_at_validate(comp):
    comp.check_builder_options("nfds", {"num_clusters": 3, "filter": "iqr"})
    with pytest.raises(UserError, match="num_cluster"):
        comp.check_builder_options("nfds", {"num_cluster": 3})
    with pytest.raises(UserError, match="unknown NFDS filter 'median'"):
        comp.check_builder_options("nfds", {"filter": "median"})
