"""Seeded random inits of small VGGT configurations of our own code, shared by the method tests (each builds in
well under a second). Never the golden weights: their ternary matrices quantize losslessly."""

from __future__ import annotations

import torch

from ptq3d.models import load_model
from ptq3d.models.layers import DinoV2Config
from ptq3d.models.vggt.config import VGGTConfig


def small_vggt_config(
    dim: int = 64,
    heads: int = 4,
    depth: int = 2,
    img: int = 56,
    init_values: float | None = None,
    dpt_idx: tuple[int, ...] = (0, 0, 1, 1),
    dpt_out_channels: tuple[int, ...] = (16, 16, 32, 32),
) -> VGGTConfig:
    """A 1-block DINOv2-style embed (4 registers) and `depth` frame/global pairs at width `dim`, `img`x`img`
    images; init_values None keeps VGGT's LayerScale init (0.01), larger values make random blocks matter."""
    extra = {} if init_values is None else {"init_values": init_values}
    return VGGTConfig(
        img_size=img,
        dino=DinoV2Config(img_size=img, embed_dim=dim, depth=1, num_heads=heads, num_register_tokens=4),
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        camera_trunk_depth=1,
        camera_num_heads=heads,
        dpt_features=16,
        dpt_out_channels=dpt_out_channels,
        dpt_intermediate_layer_idx=dpt_idx,
        **extra,
    )


def small_vggt(seed: int = 0, **config):
    """load_model(small_vggt_config(**config)) after torch.manual_seed(seed), in eval mode."""
    torch.manual_seed(seed)
    return load_model(small_vggt_config(**config))


def visible_branch_vggt(seed: int = 0, depth: int = 2, dpt_idx: tuple[int, ...] = (0, 0, 1, 1)):
    """small_vggt with LayerScale 0.5, so each block's own error is visible at its output (VGGT-1B's 0.01 would
    hide it), and narrow DPT heads (8, 16, 32, 32): the learned-transform methods' test model."""
    return small_vggt(seed, depth=depth, init_values=0.5, dpt_idx=dpt_idx, dpt_out_channels=(8, 16, 32, 32))


def assert_bundled_round_trip(tmp_path, name: str, method: str, schemes, config=None, check=None) -> None:
    """Quantize the registered model `name` with `method` at each scheme on a tiny calibration set, save, reload
    and require bit-identical state and predictions. check(model, qm): an extra assertion per scheme."""
    from ptq3d.calibration.sets import CalibrationSet, synthetic_pool
    from ptq3d.methods import load_quantized, quantize_model, save_quantized

    model = load_model(name)
    calib = CalibrationSet(synthetic_pool(1, num_frames=2, height=42, width=42, first_seed=10), seed=0)
    images = torch.stack(
        [s.images for s in synthetic_pool(1, num_frames=2, height=42, width=42, first_seed=500)]
    )
    for scheme in schemes:
        qm = quantize_model(model, method, scheme, calib, config)
        if check is not None:
            check(model, qm)
        save_quantized(qm, tmp_path / scheme)
        back = load_quantized(tmp_path / scheme, model=model)
        a, b = qm.module.state_dict(), back.module.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), (method, scheme)
        pa, pb = qm.predict(images).tensors(), back.predict(images).tensors()
        assert all(torch.equal(v, pb[k]) for k, v in pa.items()), (method, scheme)
