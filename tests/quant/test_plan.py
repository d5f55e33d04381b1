"""PrecisionPlan: entries, resolution on a scheme, files, hash, errors."""

from __future__ import annotations

import pytest

from ptq3d.errors import ConfigError
from ptq3d.quant.plan import PrecisionPlan, parse_entry
from ptq3d.quant.spec import Scheme, get_scheme


def test_entries():
    assert parse_entry("w8") == (8, None)
    assert parse_entry("W6a16") == (6, 16)
    for bad in ("8", "w9", "w4a1", "a8", "w4a8x"):
        with pytest.raises(ConfigError):
            parse_entry(bad)


def test_resolution_keeps_the_base_formats():
    plan = PrecisionPlan("p", blocks={"b0": "w8", "b1": "w8a16"}, sites={"b0.fc2": "w6a8"})
    base = get_scheme("w4a4-static-asym").with_plan(plan)
    assert base.name == "w4a4-static-asym+p" and base.is_mixed
    b0 = base.for_block("b0")
    assert b0.weight.bits == 8 and not b0.weight.symmetric and b0.act.bits == 4 and not b0.act.dynamic
    assert base.for_block("b1").act is None
    site = base.for_site("b0.fc2", "b0")
    assert (site.weight.bits, site.act.bits, site.act.granularity) == (6, 8, "tensor")
    other = base.for_site("b2.fc1", "b2")
    assert other.weight == base.weight and other.act == base.act and not other.is_mixed
    # a16 base, a plan asking for activations: per-token dynamic, the default activation format
    a = get_scheme("w4a16").with_plan(PrecisionPlan("q", blocks={"b0": "w8a8"})).for_block("b0")
    assert a.act.bits == 8 and a.act.dynamic and a.act.granularity == "token"
    # static override keeps the plan
    st = get_scheme("w4a8").with_plan(plan).with_static_act()
    assert st.name == "w4a8-static+p" and st.plan is plan and not st.act.dynamic


def test_files_dict_and_hash(tmp_path):
    plan = PrecisionPlan("p", blocks={"b0": "w8"}, source={"made_by": "test", "budget_bits": 4.5, "ok": True})
    for suffix in (".toml", ".json"):
        back = PrecisionPlan.load(plan.save(tmp_path / f"plan{suffix}"))
        assert back == plan
    assert Scheme.from_dict(get_scheme("w4a8").with_plan(plan).to_dict()).plan == plan
    renamed = PrecisionPlan("p", blocks={"b0": "w8"}, source={"made_by": "other"})
    assert renamed.hash == plan.hash  # provenance does not change bits
    assert PrecisionPlan("p", blocks={"b0": "w6"}).hash != plan.hash


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="names no block and no site"):
        PrecisionPlan("empty")
    with pytest.raises(ConfigError, match="plan name"):
        PrecisionPlan("has space", blocks={"b": "w8"})
    with pytest.raises(ConfigError, match="blocks.b0"):
        PrecisionPlan("p", blocks={"b0": "eight"})
    with pytest.raises(ConfigError, match="not found"):
        PrecisionPlan.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(ConfigError, match="bad.toml: not a valid plan"):
        PrecisionPlan.load(tmp_path / "bad.toml")
    none_source = PrecisionPlan("p", blocks={"b": "w8"}, source={"task": None})
    with pytest.raises(ConfigError, match="cannot write .*plan.toml as TOML"):
        none_source.save(tmp_path / "plan.toml")
    assert PrecisionPlan.load(none_source.save(tmp_path / "plan.json")) == none_source
    (tmp_path / "extra.json").write_text('{"name": "p", "blocks": {"b": "w8"}, "bits": 3}')
    with pytest.raises(ConfigError, match="unknown plan key"):
        PrecisionPlan.load(tmp_path / "extra.json")
