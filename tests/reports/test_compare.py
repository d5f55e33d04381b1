"""`ptq3d compare`: cells matched by identity (not label), mismatches refused, names validated, new / missing cells
apart, and the noise-aware mode (paired bootstrap over scenes) on constructed stores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap

from ptq3d.errors import UserError
from ptq3d.harness.cli import main
from ptq3d.reports.compare import cell_identity, compare_stores, paired_bootstrap_ci
from ptq3d.results.records import (
    AGGREGATE_SCENE,
    CalibRef,
    CellResult,
    CellSpec,
    EvalOptions,
    MethodRef,
    MetricRow,
    ModelRef,
    ProtocolRef,
)
from ptq3d.results.store import ResultsStore

SCENES = ["s0", "s1", "s2", "s3"]
BASE = {"depth.abs_rel": [0.10, 0.20, 0.15, 0.30], "depth.delta1": [0.9, 0.8, 0.85, 0.7]}
INFO = {
    "depth.abs_rel": {"higher_is_better": False, "unit": "", "aggregation": "mean"},
    "depth.delta1": {"higher_is_better": True, "unit": "", "aggregation": "mean"},
    "depth.pixels": {"higher_is_better": None, "unit": "count", "aggregation": "sum"},
}


def _cell(method="rtn", label="", config=None, seed=0, values=None, scenes=SCENES, protocol_hash="p1", status="ok",
          weights="w1", version="1", alignment=None, scope="aggregator", calib="c1"):  # fmt: skip
    values = values or BASE
    spec = CellSpec(
        model=ModelRef("toy", label="Toy", weights_sha256=weights),
        method=MethodRef(method, label=label, config=dict(config or {}), version=version),
        scheme="w4a4",
        protocol=ProtocolRef("toy-smoke", alignment=alignment),
        calibration=CalibRef("random", "toy-heldout", num_scenes=2, seed=seed),
        options=EvalOptions(scope=scope),
    )
    rows = []
    for metric, per in values.items():
        per = per[: len(scenes)]
        rows += [MetricRow("fake", s, metric, v) for s, v in zip(scenes, per, strict=True)]
        rows.append(MetricRow("fake", AGGREGATE_SCENE, metric, float(np.mean(per)), None, len(per)))
        rows.append(MetricRow("fake", AGGREGATE_SCENE, "depth.pixels", 36.0 * len(per), None, len(per)))
    prov = {"protocol_hash": protocol_hash, "model_hash": "m1", "scenes": {s: f"h-{s}" for s in scenes},
            "calibration_hash": calib}  # fmt: skip
    return CellResult(spec, status=status, reason="" if status == "ok" else "eval_fake: NaN", metrics=rows,
                      metric_info=INFO, provenance=prov)  # fmt: skip


def _store(path, *cells):
    with ResultsStore(path) as st:
        for c in cells:
            st.write_cell(c, "run")
    return path


def _shift(delta):
    return {
        m: [v + d for v, d in zip(vals, delta, strict=True)]
        for m, vals in BASE.items()
        if m == "depth.abs_rel"
    } | {"depth.delta1": BASE["depth.delta1"]}


@pytest.fixture
def base(tmp_path):
    return _store(tmp_path / "base.sqlite", _cell(), _cell(method="wonly", label="W-only"))


def test_identical_stores_pass(base, tmp_path):
    r = compare_stores(base, base)
    assert r.passed and r.compared_cells == 2 and r.compared_values == 4 and not r.regressions
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _store(run_dir / "results.sqlite", _cell(), _cell(method="wonly"))
    assert compare_stores(base, run_dir).passed  # a run directory works as the CLI's


def test_labels_do_not_matter_methods_do(base, tmp_path):
    relabelled = _store(
        tmp_path / "new.sqlite", _cell(label="RTN (ours)"), _cell(method="wonly", label="other")
    )
    r = compare_stores(base, relabelled)
    assert r.passed and r.compared_cells == 2
    # same label, different method config: not the same cell -> listed as new and missing, not as regressions
    reconfigured = _store(
        tmp_path / "cfg.sqlite", _cell(config={"clip": 0.9}), _cell(method="wonly", label="W-only")
    )
    r = compare_stores(base, reconfigured)
    assert r.compared_cells == 1 and not r.regressions and not r.passed
    assert len(r.new_cells) == 1 and len(r.missing_cells) == 1
    text = r.to_text()
    assert text.index("MISSING") < text.index("NEW cells") and "REGRESSIONS" not in text
    assert compare_stores(base, reconfigured, allow_missing=True).passed
    # nothing matches at all: an error, never "0 values over 0 cells"
    other = _store(tmp_path / "other.sqlite", _cell(config={"clip": 0.5}))
    with pytest.raises(UserError, match="no cell of .* matches"):
        compare_stores(base, other)
    assert cell_identity(_cell(label="a").spec.to_dict()) == cell_identity(_cell(label="b").spec.to_dict())


def test_differing_scene_sets_and_protocols_are_refused(base, tmp_path):
    two = _store(tmp_path / "two.sqlite", _cell(scenes=SCENES[:2]), _cell(method="wonly", scenes=SCENES[:2]))
    with pytest.raises(UserError, match=r"scene sets differ \(4 vs 2 scenes.*--allow-mismatch scenes") as e:
        compare_stores(base, two)
    assert "\n" not in str(e.value)
    allowed = compare_stores(base, two, allow_mismatch=["scenes"])
    assert len(allowed.mismatches) == 2 and "ALLOWED MISMATCHES" in allowed.to_text()
    reproto = _store(
        tmp_path / "proto.sqlite", _cell(protocol_hash="p2"), _cell(method="wonly", protocol_hash="p2")
    )
    with pytest.raises(UserError, match="protocol 'toy-smoke' differs"):
        compare_stores(base, reproto)


def test_what_ran_underneath_is_checked_and_code_versions_are_gated(base, tmp_path):
    def store(name, **kw):
        return _store(tmp_path / name, _cell(**kw), _cell(method="wonly", label="W-only", **kw))

    with pytest.raises(
        UserError, match=r"protocol 'toy-smoke' differs \(alignment policy default/\w+ vs cut3r/"
    ):
        compare_stores(base, store("align.sqlite", alignment="cut3r"))
    with pytest.raises(UserError, match=r"model weights differ \(checkpoint sha256 w1 vs w2\)"):
        compare_stores(base, store("weights.sqlite", weights="w2"))
    with pytest.raises(UserError, match=r"calibration data differs \(content hash c1 vs c2\)"):
        compare_stores(base, store("calib.sqlite", calib="c2"))
    assert compare_stores(base, store("calib2.sqlite", calib="c2"), allow_mismatch=["calibration"]).mismatches
    # a new method code version is what the gate is for: matched, and noted
    r = compare_stores(base, store("v2.sqlite", version="2"))
    assert r.passed and r.compared_cells == 2 and "method code version 1 -> 2" in r.to_text()
    # another quantization scope is another cell
    r = compare_stores(base, _store(tmp_path / "scope.sqlite", _cell(scope="all"), _cell(method="wonly")))
    assert r.compared_cells == 1 and len(r.new_cells) == len(r.missing_cells) == 1


def test_metric_names_and_tolerances_are_validated(base):
    with pytest.raises(UserError, match=r"unknown metric .* 'bogus'.*known: depth.abs_rel, depth.delta1\)"):
        compare_stores(base, base, metrics=["bogus"])
    with pytest.raises(UserError, match="'foo'"):
        compare_stores(base, base, metric_tolerances={"foo": 0.1})
    with pytest.raises(UserError, match="depth.pixels"):  # a count has no direction: not gateable
        compare_stores(base, base, metrics=["depth.pixels"])
    with pytest.raises(UserError, match="must be a finite number >= 0"):
        compare_stores(base, base, metric_tolerances={"depth.abs_rel": float("nan")})


def test_noise_aware_passes_noise_and_fails_a_real_regression(base, tmp_path):
    noisy = _store(
        tmp_path / "noisy.sqlite", _cell(values=_shift([0.02, -0.02, 0.01, -0.005])), _cell(method="wonly")
    )
    plain = compare_stores(base, noisy)
    assert not plain.passed and [r.metric for r in plain.regressions] == ["depth.abs_rel"]  # flaps
    aware = compare_stores(base, noisy, noise_aware=True)
    assert aware.passed and aware.within_noise == 1
    worse = _store(
        tmp_path / "worse.sqlite", _cell(values=_shift([0.05, 0.06, 0.04, 0.05])), _cell(method="wonly")
    )
    r = compare_stores(base, worse, noise_aware=True)
    assert not r.passed and len(r.regressions) == 1
    reg = r.regressions[0]
    assert reg.n_scenes == 4 and reg.ci[0] > 0.03 and reg.ci[1] <= 0.06 + 1e-12
    assert "CI [" in r.to_text()
    # a tolerance above the whole interval lets it pass
    assert compare_stores(base, worse, noise_aware=True, tolerance=0.07).passed


def test_failed_cell_in_new_store_regresses(base, tmp_path):
    failed = _store(tmp_path / "failed.sqlite", _cell(status="failed"), _cell(method="wonly", label="W-only"))
    r = compare_stores(base, failed)
    assert not r.passed and "failed in the new store: eval_fake: NaN" in r.to_text()
    back = compare_stores(failed, base)  # failed in the baseline: listed, nothing to gate against
    assert back.passed and back.compared_cells == 1 and "FAILED in the baseline" in back.to_text()


def test_paired_bootstrap_ci_matches_scipy_and_degenerate_cases():
    d = np.array([0.02, -0.02, 0.01, -0.005, 0.03])
    lo, hi = paired_bootstrap_ci(d, 0.9, 3000, seed=7)
    ref = bootstrap((d,), np.mean, confidence_level=0.9, n_resamples=3000, method="percentile",
                    rng=np.random.default_rng(7)).confidence_interval  # fmt: skip
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    assert lo < d.mean() < hi and paired_bootstrap_ci(d, 0.9, 3000, seed=7) == (lo, hi)  # seeded
    assert paired_bootstrap_ci(np.array([0.3]), 0.95) == (0.3, 0.3)
    assert paired_bootstrap_ci(np.full(4, 0.05), 0.95) == pytest.approx((0.05, 0.05))


def test_cli_exit_codes(base, tmp_path, capsys):
    assert main(["compare", str(base), str(base)]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")
    worse = _store(
        tmp_path / "worse.sqlite", _cell(values=_shift([0.05, 0.06, 0.04, 0.05])), _cell(method="wonly")
    )
    assert main(["compare", str(base), str(worse), "--noise-aware", "--metrics", "depth.abs_rel"]) == 1
    out = capsys.readouterr().out
    assert "Toy | rtn | w4a4 | toy-smoke | random/seed0: depth.abs_rel" in out and out.strip().endswith(
        "FAIL"
    )
    for argv, msg in (
        (["--metrics", "bogus"], "unknown metric"),
        (["--metric-tolerance", "foo=0.1"], "'foo'"),
        (["--allow-mismatch", "weather"], "allowed kinds are scenes, protocol, model, calibration"),
    ):
        assert main(["compare", str(base), str(base), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
