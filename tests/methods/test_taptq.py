"""TAPTQ: interval solvers, twin quantizer, TRE, closed-form low-rank compensation, the method on small VGGT and
Pi3 models, and save/load of its extra modules."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from taptq_models import calib, heldout_images, small_pi3, small_vggt
from torch import nn

from ptq3d.calibration.blockwise import replace_module
from ptq3d.errors import ConfigError
from ptq3d.methods import load_quantized, quantize_model, save_quantized
from ptq3d.methods.api import MANIFEST_FILE, STATE_FILE
from ptq3d.methods.taptq import search_counts
from ptq3d.methods.taptq_compensation import (
    COMP_CHILD,
    LeastSquaresFit,
    LowRankCompensation,
    attach_compensation,
    low_rank_factors,
    rebuild_taptq_modules,
    tail_relative_error,
)
from ptq3d.methods.taptq_search import (
    GridObjective,
    TwinQuantLinear,
    exhaustive_search,
    ternary_search,
    twin_fake_quantize,
)
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import sqnr_db

torch.set_num_threads(1)


# --- solvers ---------------------------------------------------------------------------------------


def test_ternary_matches_exhaustive_on_unimodal_grids():
    """Per block, strictly unimodal curves (random minimum and slopes): same argmin, <= 1/5 of the evaluations."""
    g = torch.Generator().manual_seed(0)
    n, nb = 101, 64
    centre = torch.randint(0, n, (nb,), generator=g)
    slope_l, slope_r = torch.rand(nb, generator=g) + 0.1, torch.rand(nb, generator=g) + 0.1
    k = torch.arange(n)

    def f(idx):
        d = (idx - centre).double()
        return torch.where(d < 0, -d * slope_l, d * slope_r) + 1 + 0.01 * d.abs().pow(1.5)

    tern = GridObjective(f, nb, n)
    idx = ternary_search(tern, refine=0)
    ref = GridObjective(f, nb, n)
    assert torch.equal(idx, exhaustive_search(ref))
    assert torch.equal(idx, centre)
    assert ref.evals == n and tern.evals <= n / 5, tern.evals
    # memoised: asking again for known values costs nothing
    before = tern.evals
    tern(idx)
    assert tern.evals == before and k.numel() == n


def test_ternary_code_variant_and_refine():
    f = lambda idx: (idx.double() - 37).abs() + 2  # noqa: E731
    code = GridObjective(f, 1, 101)
    assert abs(int(ternary_search(code, "code")[0]) - 37) <= 1
    assert code.evals > 20  # the repo's variant spends ~4 evaluations per iteration
    # a ripple next to the optimum fools plain ternary search; the local refine scan recovers it
    ripple = torch.tensor(
        [abs(i - 50) + (0 if i == 47 else 3 * (i % 2)) for i in range(101)], dtype=torch.float64
    )
    ripple[47] = -1.0

    def fr(idx):
        return ripple[idx]

    plain = int(ternary_search(GridObjective(fr, 1, 101), refine=0)[0])
    refined = int(ternary_search(GridObjective(fr, 1, 101), refine=3)[0])
    assert refined == 47 and plain != 47
    with pytest.raises(ConfigError, match="ternary_variant"):
        ternary_search(GridObjective(fr, 1, 101), "nope")


# --- twin quantizer, TRE ------------------------------------------------------------------------------


def test_twin_quantizer_ranges():
    bits = 4  # positive codes 0..7, negative codes -8..0
    pos, neg = torch.tensor([[0.5]]), torch.tensor([[0.16997 / 8]])
    x = torch.tensor([-1.0, -0.17, -0.05, 0.0, 0.24, 0.26, 3.4, 100.0])
    y = twin_fake_quantize(x, pos, neg, bits)
    n = float(neg)
    want = torch.tensor([-8 * n, -8 * n, round(-0.05 / n) * n, 0.0, 0.0, 0.5, 3.5, 3.5])
    torch.testing.assert_close(y, want)


def test_tail_relative_error_on_known_tails():
    """1000 outputs: 10 large (|y| = 10, the top 1 %), 990 small. TRE sees only the tail's errors."""
    y = torch.full((1000,), 0.1)
    y[::100] = torch.tensor([10.0, -10.0] * 5)
    y_hat = y.clone()
    y_hat[::100] += 1.0  # error 1 on each of the 10 tail elements
    assert tail_relative_error(y, y_hat, rho=0.01) == pytest.approx(10 * 1.0 / (10 * 100.0), rel=1e-9)
    body = y.clone()
    body[1::100] += 5.0  # large errors off the tail do not count
    assert tail_relative_error(y, body, rho=0.01) == 0.0
    # rho = 0.5 takes 500 elements: the 10 tail ones plus 490 small ones
    tre = tail_relative_error(y, y_hat, rho=0.5)
    assert tre == pytest.approx(10.0 / (10 * 100.0 + 490 * 0.01), rel=1e-6)
    assert tail_relative_error(y.reshape(10, 100), y_hat.reshape(10, 100), 0.01) == pytest.approx(
        0.01, rel=1e-9
    )


# --- compensation ---------------------------------------------------------------------------------


class _Unit(nn.Module):
    def __init__(self, dim=24, hidden=48, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def test_compensation_removes_injected_linear_error():
    """q(x) = f(x) - (x M + c) with M of rank 3: the fit recovers M and c, and the rank-3 compensation attached to
    the module makes it equal to f."""
    dim, r = 24, 3
    g = torch.Generator().manual_seed(1)
    M = (torch.randn(dim, r, generator=g) @ torch.randn(r, dim, generator=g)).double() * 0.1
    c = torch.randn(dim, generator=g).double()
    fp = _Unit()
    q = copy.deepcopy(fp)

    def inject(_m, args, out):
        return out - (args[0].double() @ M + c).float()

    q.register_forward_hook(inject)
    x = torch.randn(3, 200, dim, generator=g)
    fit = LeastSquaresFit(dim, dim)
    with torch.no_grad():
        for xi in x:
            fit.add(xi, fp(xi) - q(xi))
    W, b, r2 = fit.solve(ridge=0.0)
    torch.testing.assert_close(W, M, atol=1e-6, rtol=1e-5)  # float32 module outputs
    torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5)
    assert r2 == pytest.approx(1.0, abs=1e-9)
    A, B = low_rank_factors(W, r)
    attach_compensation(q, LowRankCompensation.from_factors(A, B, b))
    with torch.no_grad():
        torch.testing.assert_close(q(x), fp(x), atol=1e-5, rtol=1e-5)
    assert isinstance(getattr(q, COMP_CHILD), LowRankCompensation)


def test_rank_truncation_is_truncated_svd():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(32, 20, generator=g).double()
    S = torch.linalg.svdvals(W)
    for r in (1, 4, 20, 50):
        A, B = low_rank_factors(W, r)
        k = min(r, 20)
        assert A.shape == (32, k) and B.shape == (k, 20)
        assert torch.linalg.matrix_rank(A @ B) == k
        # Eckart-Young: the residual norm is the norm of the dropped singular values
        assert float(torch.linalg.norm(W - A @ B)) == pytest.approx(float(S[k:].norm()), abs=1e-9)
    m = LowRankCompensation.from_factors(*low_rank_factors(W, 4), torch.zeros(20))
    x = torch.randn(5, 32, generator=g)
    torch.testing.assert_close(
        m(x), (x.double() @ low_rank_factors(W, 4)[0] @ low_rank_factors(W, 4)[1]).float()
    )


# --- the method on small VGGT and Pi3 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vggt():
    return small_vggt(0)


@pytest.fixture(scope="module")
def cal():
    return calib(3)


@pytest.fixture(scope="module")
def taptq_vggt(vggt, cal):
    return quantize_model(vggt, "taptq", "w4a8", cal, {"tau": 0.0}, scope="all")


def _sqnr(ref, pred):
    return {"depth": sqnr_db(ref.depth, pred.depth), "points": sqnr_db(ref.world_points, pred.world_points)}


def test_taptq_formats_and_stats(taptq_vggt, vggt):
    qm = taptq_vggt
    layers = qm.quant_layers()
    assert len(layers) == 20  # 1 DINOv2 + 4 aggregator blocks, scope "all"
    for name, ql in layers.items():
        assert ql.act_spec is not None and not ql.act_spec.dynamic and ql.act_spec.granularity == "tensor"
        assert float(ql.act_scale) > 0
        if name.endswith("attn.qkv"):
            s = ql.weight_scale.flatten()
            assert ql.weight_spec.granularity == "channel" and s.unique().numel() == 3  # q, k, v intervals
            assert torch.equal(s[:64], s[:1].expand(64))
        else:
            assert ql.weight_spec.granularity == "tensor" and ql.weight_scale.shape == (1, 1)
        assert isinstance(ql, TwinQuantLinear) == name.endswith("mlp.fc2")
    st = qm.stats.layers
    for name in layers:
        rec = st[name]
        assert rec["w_evals"] > 0 and rec["a_evals"] > 0 and 0.01 <= rec["a_alpha"] <= 2.0
    # the searched intervals beat the max-based ones (alpha = 1) on most layers
    better = [st[n]["objective"] < st[n]["objective_init"] for n in layers]
    assert sum(better) >= 0.75 * len(better), better
    assert json.dumps(qm.stats.to_dict(), allow_nan=False)
    # tau = 0: every unit with R^2 > 0 is compensated, and the compensation lowers its TRE
    blocks = {b["name"]: b for b in qm.stats.blocks}
    comp = {p for b in blocks.values() for p in b["taptq_comp"]}
    assert len(comp) >= 8
    for b in blocks.values():
        for unit in ("attn", "mlp"):
            if b[f"{unit}_comp_rank"]:
                assert b[f"{unit}_tre_after"] < b[f"{unit}_tre"]
    for path in comp:
        assert isinstance(qm.module.get_submodule(path + "." + COMP_CHILD), LowRankCompensation)


def test_taptq_output_quality_on_toy(toy, toy_calib, toy_images):
    """On the outlier-heavy toy model at w4a8 (static per-tensor activations everywhere): TAPTQ with per-channel
    weights beats RTN with per-channel weights, and the compensation improves TAPTQ."""
    ref = toy.predict(toy_images)

    def s(qm):
        return sqnr_db(ref.depth.log(), qm.predict(toy_images).depth.log())

    rtn = s(quantize_model(toy, "rtn", "w4a8", toy_calib, {"act_static": True}))
    ch = s(quantize_model(toy, "taptq", "w4a8", toy_calib, {"weight_granularity": "channel"}))
    full = s(quantize_model(toy, "taptq", "w4a8", toy_calib))
    nocomp = s(quantize_model(toy, "taptq", "w4a8", toy_calib, {"compensation": False}))
    print(
        f"\ntoy w4a8 log-depth SQNR dB: rtn {rtn:.2f}, taptq per-channel {ch:.2f}, taptq {full:.2f}, no comp {nocomp:.2f}"
    )
    assert ch > rtn + 3 and full > nocomp


def test_solver_acceptance_small_vggt(vggt, cal):
    """Ternary search: within 1 % of the exhaustive optimum of the same objective on >= 95 % of the layers, with
    at most 1/5 of the evaluations (check_solver runs the exhaustive reference on every objective)."""
    qm = quantize_model(
        vggt, "taptq", "w4a8", cal, {"check_solver": True, "compensation": False, "metric": "mse"}
    )
    st = qm.stats.layers
    gaps = [max(r["w_gap"], r["a_gap"]) for r in st.values()]
    ok = sum(g <= 0.01 for g in gaps)
    counts = search_counts(qm.stats)
    exhaustive = 101 * 2 * 2 * len(st)  # grid x rounds x (weights, activations) x layers
    print(
        f"\nwithin 1 %: {ok}/{len(gaps)} layers; evaluations ternary {counts['evals']} vs exhaustive {exhaustive}"
    )
    assert ok >= 0.95 * len(gaps)
    assert counts["evals"] <= exhaustive / 5


def test_taptq_on_pi3(cal):
    model = small_pi3(0)
    imgs = heldout_images()
    ref = model.predict(imgs)
    qm = quantize_model(model, "taptq", "w4a8", cal, {"tau": 0.0}, scope="all")
    assert set(qm.manifest["sites"]) == set(model.quant_sites("all"))
    assert isinstance(qm.quant_layers()["decoder.1.mlp.fc2"], TwinQuantLinear)
    assert any(b["taptq_comp"] for b in qm.stats.blocks)
    s = _sqnr(ref, qm.predict(imgs))
    off = quantize_model(model, "taptq", "w4a8", cal, {"compensation": False}, scope="all")
    s_off = _sqnr(ref, off.predict(imgs))
    print(f"\nsmall Pi3 w4a8 SQNR dB: taptq {s}, without compensation {s_off}")
    assert all(math.isfinite(v) and v > 5 for v in s.values())


def test_channelwise_weights_and_dynamic_acts(vggt, cal):
    qm = quantize_model(
        vggt,
        "taptq",
        "w4a8",
        cal,
        {"weight_granularity": "channel", "act_static": False, "compensation": False},
    )
    for ql in qm.quant_layers().values():
        assert ql.weight_spec.granularity == "channel" and ql.act_spec.dynamic
        assert type(ql) is QuantLinear  # no twin quantizer with dynamic activations
    assert all(r["a_evals"] == 0 for r in qm.stats.layers.values())


def test_config_and_data_errors(vggt, cal):
    with pytest.raises(ConfigError, match="w_solver"):
        quantize_model(vggt, "taptq", "w4a8", cal, {"w_solver": "bisect"})
    with pytest.raises(ConfigError, match="asymmetric"):
        quantize_model(vggt, "taptq", "w4a8-asym", cal)
    from ptq3d.calibration.sets import CalibrationSet, random_pool

    nogt = CalibrationSet(random_pool(1, num_frames=2, height=56, width=56))
    with pytest.raises(ConfigError, match="needs GT depth"):  # the gradient-weighted objective needs GT depth
        quantize_model(vggt, "taptq", "w4a8", nogt, {"metric": "hessian"})


# --- save / load ----------------------------------------------------------------------------------


def test_compensation_survives_deepcopy(taptq_vggt):
    imgs = heldout_images(1)
    clone = copy.deepcopy(taptq_vggt.model)
    a, b = taptq_vggt.predict(imgs), clone.predict(imgs)
    assert torch.equal(a.depth, b.depth)
    path = next(p for blk in taptq_vggt.stats.blocks for p in blk["taptq_comp"])
    clone.module.get_submodule(path + "." + COMP_CHILD).bias.add_(
        1.0
    )  # the clone's hook uses the clone's child
    assert torch.equal(taptq_vggt.predict(imgs).depth, a.depth)
    assert not torch.equal(clone.predict(imgs).depth, a.depth)


def test_save_and_rebuild_bit_exact(tmp_path, taptq_vggt):
    """Saved state + manifest rebuild the twin layers and compensation modules on a fresh model, bit-exactly."""
    from safetensors.torch import load_file

    d = save_quantized(taptq_vggt, tmp_path / "q")
    doc = json.loads((d / MANIFEST_FILE).read_text())
    fresh = small_vggt(seed=7)  # different weights: everything must come from the saved state
    for site, entry in doc["sites"].items():  # what load_quantized does ...
        replace_module(fresh.module, site, QuantLinear.from_config(entry["layer"]))
    assert rebuild_taptq_modules(fresh.module, doc) > 0  # ... plus TAPTQ's rebuild hook
    fresh.module.load_state_dict(load_file(str(d / STATE_FILE)), strict=True)
    imgs = heldout_images(1)
    a, b = taptq_vggt.predict(imgs), fresh.predict(imgs)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k]), k
    # through the public loader, which calls quantize_taptq.rebuild_modules
    back = load_quantized(d, model=small_vggt(seed=7))
    for k, v in a.tensors().items():
        assert torch.equal(v, back.predict(imgs).tensors()[k]), k
