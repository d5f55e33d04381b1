"""TAPTQ w4a8 on the bundled trained tiny VGGT runs its real-kernel stage: fake vs emulated, layer by layer
(bit-exact activation codes, outputs to float32 summation order) and on the task metrics (within the noise
floor of 1e-6 input perturbations).

Calibration is cut to one scene of two views and a 1024-token search budget to keep the test fast; the
formats (per-tensor weights, three qkv intervals, static per-tensor activations, twin-uniform fc2 inputs)
are TAPTQ's defaults.
"""

from __future__ import annotations

import pytest
import torch

from ptq3d.kernels import parity_check
from ptq3d.kernels.parity import layer_parity
from ptq3d.methods.taptq_search import TwinQuantLinear


@pytest.fixture(scope="module")
def taptq_bundled():
    from ptq3d.calibration.sets import CalibrationSet
    from ptq3d.datasets.protocols import get_protocol, load_protocol_scenes, select_frames
    from ptq3d.methods.api import quantize_model
    from ptq3d.models import load_model

    fp = load_model("vggt-tiny-synthetic")
    scene = load_protocol_scenes(get_protocol("synthetic-calib-112").with_limit(1))[0]
    cal = CalibrationSet([select_frames(scene, [0, 1])], builder="random", seed=0)
    qm = quantize_model(fp, "taptq", "w4a8", cal, {"max_tokens": 1024})
    held = load_protocol_scenes(get_protocol("synthetic-heldout-112").with_limit(1))[0]
    return fp, qm, held.images[None, :4]


def test_taptq_formats_run_on_emulated_layer_by_layer(taptq_bundled):
    _, qm, images = taptq_bundled
    layers = qm.quant_layers()
    twins = {n for n, q in layers.items() if isinstance(q, TwinQuantLinear)}
    assert twins == {n for n in layers if n.endswith("mlp.fc2")} and len(twins) == 8  # 4 frame + 4 global
    assert any(q.weight_spec.granularity == "tensor" for q in layers.values())
    assert all(q.act_spec is not None and not q.act_spec.dynamic for q in layers.values())
    rep = layer_parity(qm, [images])
    assert rep["act_mismatches"] == 0, rep
    assert all(r["calls"] == 1 and r["act_elements"] > 0 for r in rep["layers"].values())
    assert rep["max_diff_over_bound"] <= 1.0, rep  # float32 summation order, nothing more


def test_taptq_task_metrics_fake_vs_emulated_within_noise_floor(taptq_bundled):
    """Measured (this test's setup, 2-core Xeon): |diff| / max over 6 noise draws = 0.84 (abs_rel), 0.05
    (rot_err_deg), 0.04 (trans_err_deg); a wrong kernel (e.g. the positive scale on GELU's negative lobe)
    moves them by orders of magnitude more. Bound: 3x the largest of 6 draws."""
    from ptq3d.metrics.depth import depth_metrics
    from ptq3d.metrics.pose import relative_pose_errors

    fp, qm, images = taptq_bundled
    with torch.no_grad():
        ref = fp.predict(images)

    def metrics(pred, _):
        d = depth_metrics(pred.depth[0], ref.depth[0], alignment="median").metrics
        pe = relative_pose_errors(pred.extrinsics[0], ref.extrinsics[0])
        return {"abs_rel": d["abs_rel"], "rot_err_deg": float(pe.rot_err_deg.mean()),
                "trans_err_deg": float(pe.trans_err_deg.mean())}  # fmt: skip

    rep = parity_check(qm, [images], metrics, noise_rel=1e-6, noise_draws=6)
    assert rep["metrics"]["fake"]["rot_err_deg"] > 0.1  # quantization is visible against FP
    for k, d in rep["diff"]["emulated"].items():
        assert abs(d) <= 3 * rep["noise_floor"][k], (k, rep)
    for k, d in rep["max_output_abs_diff"]["emulated"].items():
        assert d <= 3 * rep["output_noise_floor"][k], (k, rep)
