"""Evaluation precision as the papers run it: bf16 autocast around the forward pass, heads in float32.

Measured on this CPU (vggt-tiny-synthetic, one synthetic-heldout-112 scene): bf16-autocast moves every
prediction field by 2e-4 .. 1.1e-3 relative L2 vs fp32 (RTN w8a8 alike); the tolerance below is 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from ptq3d.datasets import load_protocol_scenes
from ptq3d.errors import ConfigError
from ptq3d.methods import quantize_model
from ptq3d.models import load_model
from ptq3d.models.base import eval_precision
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec

REL_TOL = 1e-2  # bf16 vs fp32, relative L2 per prediction field


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_protocol_scenes("synthetic-heldout-112", limit=1)[0].images[None]


@pytest.fixture(scope="module")
def vggt():
    return load_model("vggt-tiny-synthetic")


@pytest.fixture(scope="module")
def pi3(reference_dir):
    return load_model("pi3-tiny", weights=reference_dir / "pi3_tiny_state.safetensors.xz")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _output_dtypes(model, module_path: str, images: torch.Tensor, precision: str) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    handle = model.module.get_submodule(module_path).register_forward_hook(
        lambda _m, _a, out: seen.append(out.dtype)
    )
    try:
        model.predict(images, precision=precision)
    finally:
        handle.remove()
    return seen


def _check_close(fp32, bf16) -> None:
    for name, ref in fp32.tensors().items():
        got = bf16.tensors()[name]
        assert got.dtype == torch.float32, f"{name} is {got.dtype}: the heads must run in float32"
        err = _rel(got, ref)
        assert err < REL_TOL, f"{name}: bf16 vs fp32 relative error {err:.2e} >= {REL_TOL}"
    # bf16 really ran somewhere: the predictions are not bit-identical to fp32
    assert any(_rel(bf16.tensors()[n], r) > 0 for n, r in fp32.tensors().items())


def test_vggt_bf16_autocast_heads_fp32_and_close(vggt, images):
    fp32 = vggt.predict(images)
    bf16 = vggt.predict(images, precision="bf16-autocast")
    _check_close(fp32, bf16)
    # the aggregator's linears run in bf16, the camera head's in float32
    assert set(_output_dtypes(vggt, "aggregator.frame_blocks.0.mlp.fc1", images, "bf16-autocast")) == {
        torch.bfloat16
    }
    head_linear = next(
        n for n, m in vggt.module.camera_head.named_modules() if isinstance(m, torch.nn.Linear)
    )
    dtypes = _output_dtypes(vggt, f"camera_head.{head_linear}", images, "bf16-autocast")
    assert dtypes and set(dtypes) == {torch.float32}
    # fp32 stays fp32 everywhere
    assert set(_output_dtypes(vggt, "aggregator.frame_blocks.0.mlp.fc1", images, "fp32")) == {torch.float32}


def test_pi3_bf16_autocast_heads_fp32_and_close(pi3):
    x = torch.rand(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    fp32 = pi3.predict(x)
    bf16 = pi3.predict(x, precision="bf16-autocast")
    _check_close(fp32, bf16)
    assert set(_output_dtypes(pi3, "decoder.0.mlp.fc1", x, "bf16-autocast")) == {torch.bfloat16}
    # Pi3 has one confidence map; the two fields must not share storage (safetensors, the FP cache, refuses it)
    assert bf16.depth_conf.data_ptr() != bf16.points_conf.data_ptr()
    assert torch.equal(bf16.depth_conf, bf16.points_conf)


def test_quantized_model_under_autocast_stays_close(vggt, images):
    q = quantize_model(vggt, "rtn", "w8a8")
    fp32 = q.predict(images)
    with torch.no_grad(), eval_precision("bf16-autocast", "cpu"):
        bf16 = q.predict(images)
    _check_close(fp32, bf16)


def test_fake_quant_layer_quantizes_in_fp32_returns_autocast_dtype():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    act = QuantSpec(bits=8, granularity="token", dynamic=True)
    q = QuantLinear.from_linear(lin, QuantSpec(bits=8, granularity="channel"), act)
    x = torch.randn(4, 64)
    ref = q(x)
    with eval_precision("bf16-autocast", "cpu"):
        got = q(x)
        got_bf16_input = q(x.bfloat16())
    assert ref.dtype == torch.float32
    assert got.dtype == torch.bfloat16 and got_bf16_input.dtype == torch.bfloat16
    assert _rel(got, ref) < 1e-2
    # quantized in fp32 (a 4-bit grid on the bf16-rounded input would differ), the matmul left to autocast
    xq = q.quantize_activation(x)
    w = q.dequantized_weight()
    expected = torch.nn.functional.linear(xq.bfloat16(), w.bfloat16(), q.bias.bfloat16())
    assert torch.equal(got, expected)
    q4 = QuantLinear.from_linear(
        lin, QuantSpec(bits=4, granularity="channel"), QuantSpec(4, "token", dynamic=True)
    )
    xb = x.bfloat16()
    with eval_precision("bf16-autocast", "cpu"):
        got4 = q4(xb)
    assert torch.equal(
        got4,
        torch.nn.functional.linear(
            q4.quantize_activation(xb.float()).bfloat16(),
            q4.dequantized_weight().bfloat16(),
            q4.bias.bfloat16(),
        ),
    )


def test_unknown_precision_is_one_line_error(vggt, images):
    with pytest.raises(ConfigError, match="precision = 'fp16'.*fp32, bf16-autocast"):
        vggt.predict(images, precision="fp16")


_GRID = """
[run]
schemes = ["w8a8"]
[[models]]
name = "vggt-tiny-synthetic"
[[methods]]
name = "rtn"
[[protocols]]
name = "synthetic-smoke"
[eval]
{eval}
"""


def test_eval_precision_is_a_run_setting_recorded_in_every_cell():
    from ptq3d.harness.config import loads_config

    fp32 = loads_config(_GRID.format(eval=""))
    bf16 = loads_config(_GRID.format(eval='precision = "bf16-autocast"'))
    assert {c.options.precision for c in fp32.cells()} == {"fp32"}  # the CPU default
    assert {c.options.precision for c in bf16.cells()} == {"bf16-autocast"}
    # the precision is part of what a cell ran: a bf16 cell never resumes an fp32 one
    assert {c.cell_id for c in fp32.cells()}.isdisjoint(c.cell_id for c in bf16.cells())
    assert bf16.cells()[0].to_dict()["options"]["precision"] == "bf16-autocast"
    with pytest.raises(
        ConfigError, match=r"\[eval\].precision = 'fp16': allowed values are fp32, bf16-autocast"
    ):
        loads_config(_GRID.format(eval='precision = "fp16"'))
