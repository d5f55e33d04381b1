"""GPU tests (`pytest -m gpu` on a CUDA machine): the compiled Triton kernels at VGGT shapes, and a
quantized VGGT on fake vs emulated vs triton. Excluded from the default run."""

from __future__ import annotations

import pytest
import torch
from kernels_testutil import sum_abs_products

from ptq3d.kernels import emulated

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _needs_compiled_triton():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from ptq3d.kernels._triton_env import INTERPRET

    if INTERPRET:
        pytest.skip("TRITON_INTERPRET is set: these tests need compiled kernels")


@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (4, 128), (8, 128)])
@pytest.mark.parametrize("k,n", [(1024, 3072), (4096, 1024)])
def test_gemm_int_vggt_shapes(bits, group, k, n):
    from ptq3d.kernels import triton_act_quant, triton_gemm
    from ptq3d.kernels.packing import pack_weight, quantize_weight_rtn

    torch.manual_seed(0)
    m = 1374
    x = torch.randn(m, k, device="cuda")
    q, s, z = quantize_weight_rtn(torch.randn(n, k, device="cuda"), bits, group)
    pw = pack_weight(q, s, z, bits)
    xq, xs = triton_act_quant.quantize_per_token(x)
    rq, rs = emulated.quantize_per_token(x)
    assert torch.equal(xq, rq) and torch.equal(xs, rs)
    y = triton_gemm.gemm_int(xq, xs, pw)
    ref = emulated.gemm_int(xq, xs, pw)
    torch.testing.assert_close(y, ref, rtol=1e-6 * (k // (group or k)), atol=1e-5)
    yb = triton_gemm.gemm_int(xq, xs, pw, out_dtype=torch.bfloat16)
    torch.testing.assert_close(yb.float(), ref, rtol=8e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 16, 1374])
def test_w4a16_gpu(dtype, m):
    from ptq3d.kernels import triton_gemm
    from ptq3d.kernels.packing import pack_weight, quantize_weight_rtn

    torch.manual_seed(1)
    k, n = 4096, 1024
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    q, s, z = quantize_weight_rtn(torch.randn(n, k, device="cuda"), 4, 128, symmetric=False)
    pw = pack_weight(q, s, z, 4)
    y = triton_gemm.w4a16_gemm(x, pw).float()
    ref = emulated.w4a16_gemm(x.float(), pw)
    eps = 1e-3 if dtype == torch.float16 else 8e-3
    bound = eps * sum_abs_products(x, pw.dequantize()) + eps * ref.abs() + 1e-5
    assert bool(((y - ref).abs() <= bound).all())


@pytest.mark.parametrize("k", [1024, 4096])
def test_hadamard_quant_gpu(k):
    from ptq3d.kernels import triton_hadamard

    torch.manual_seed(2)
    x = torch.randn(1374, k, device="cuda")
    signs = (torch.randint(0, 2, (k,), device="cuda") * 2 - 1).float()
    q, s = triton_hadamard.hadamard_quant(x, signs)
    rq, rs = emulated.hadamard_quant(x, signs)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=0)
    d = (q.int() - rq.int()).abs()
    assert int(d.max()) <= 1 and float((d > 0).float().mean()) <= 1e-3


def test_vggt_tiny_backends_gpu():
    from ptq3d.kernels import parity_check
    from ptq3d.methods.api import quantize_model
    from ptq3d.models import load_model

    torch.manual_seed(0)
    fp = load_model("vggt-tiny", device="cuda")
    qm = quantize_model(fp, "rtn", "w4g64a8")
    images = torch.rand(1, 2, 3, 112, 112, device="cuda")

    def metrics(pred, _):
        return {"depth_mean": float(pred.depth.mean()), "points_abs": float(pred.world_points.abs().mean())}

    rep = parity_check(qm, [images], metrics, backends=("fake", "emulated", "triton"), noise_rel=1e-6)
    for b in ("emulated", "triton"):
        for k, d in rep["diff"][b].items():
            assert abs(d) <= 4 * rep["noise_floor"][k] + 1e-4, (b, k, rep)


def test_bench_reports_tops_on_gpu():
    from ptq3d.kernels import bench

    res = bench.bench_gemms(bench.vggt_shapes((1,), ("qkv",)), "cuda",
                            ("torch_bf16", "torch_int8", "triton_w8a8", "triton_w4a16"), min_time_s=0.1)  # fmt: skip
    rows = {r["case"]: r for r in res["results"]}
    for case in ("torch_bf16", "triton_w8a8", "triton_w4a16"):
        assert rows[case]["tops"] > 0
        if res["device"]["peaks_tflops"]:
            assert 0 < rows[case]["peak_fraction"] < 1.2
