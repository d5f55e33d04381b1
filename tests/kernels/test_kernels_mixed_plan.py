"""A mixed-precision model on every integer backend: each QuantLinear dispatches on its own bits, so a plan
mixing W8/W6/W4 weights and A8/A4/A16 activations runs on the emulated backend and on the Triton kernels
(interpreter on CPU) with the same outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "methods"))
from toy_model import ToyGeometryModel  # noqa: E402

from ptq3d.methods import quantize_model  # noqa: E402
from ptq3d.quant.plan import PrecisionPlan  # noqa: E402
from ptq3d.quant.spec import sqnr_db  # noqa: E402

pytest.importorskip("ptq3d.kernels.triton_gemm")


def test_mixed_plan_triton_equals_emulated():
    torch.manual_seed(0)
    model = ToyGeometryModel(seed=0)
    blocks = [b.name for b in model.blocks("aggregator")]
    plan = PrecisionPlan(
        "mix",
        blocks={blocks[0]: "w8a8", blocks[1]: "w4a16"},
        sites={f"{blocks[2]}.mlp.fc2": "w8"},
    )
    qm = quantize_model(model, "rtn", "w4a4", plan=plan)
    assert set(qm.manifest["summary"]["bits_histogram"]) == {"W8A8", "W4A16", "W8A4", "W4A4"}
    images = torch.rand(1, 2, 3, 32, 32)
    qm.set_backend("emulated")
    ref = qm.predict(images)
    assert qm.set_backend("triton") == 16
    out = qm.predict(images)
    assert sqnr_db(ref.depth, out.depth) > 80 and sqnr_db(ref.world_points, out.world_points) > 80
