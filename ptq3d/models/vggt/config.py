"""Configuration of VGGT (facebookresearch/vggt, `vggt/models/vggt.py::VGGT`) and of its tiny conformance
variant (shared/reference/vggt_tiny.json)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ptq3d.models.layers import DinoV2Config


@dataclass(frozen=True)
class VGGTConfig:
    """VGGT hyper-parameters. Defaults are VGGT-1B (`VGGT()`), without the track head.

    dino: the DINOv2 patch embed inside the aggregator (VGGT-1B: ViT-L/14, 4 registers, LayerScale 1.0,
        pos-embed resize with offset 0 and antialias).
    embed_dim/depth/num_heads/...: the alternating frame/global aggregator blocks (depth pairs).
    camera_*: camera head trunk (width 2*embed_dim) and refinement iterations.
    dpt_*: the depth and point DPT heads (both share these settings).
    """

    img_size: int = 518
    patch_size: int = 14
    dino: DinoV2Config = field(default_factory=lambda: DinoV2Config.of_size("large"))
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    norm_eps: float = 1e-5
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_mlp_ratio: float = 4.0
    camera_init_values: float = 0.01
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23)
    dpt_frames_chunk_size: int = 8
    enable_camera: bool = True
    enable_point: bool = True
    enable_depth: bool = True

    def __post_init__(self) -> None:
        if self.dino.embed_dim != self.embed_dim:
            raise ValueError(
                f"VGGTConfig: dino.embed_dim {self.dino.embed_dim} != embed_dim {self.embed_dim}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"VGGTConfig: embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}"
            )
        if (2 * self.embed_dim) % self.camera_num_heads:
            raise ValueError(
                f"VGGTConfig: camera width {2 * self.embed_dim} not divisible by camera_num_heads {self.camera_num_heads}"
            )
        bad = [i for i in self.dpt_intermediate_layer_idx if not 0 <= i < self.depth]
        if bad and (self.enable_depth or self.enable_point):
            raise ValueError(f"VGGTConfig: dpt_intermediate_layer_idx {bad} outside 0..{self.depth - 1}")

    @property
    def patch_start_idx(self) -> int:
        """1 camera token + the register tokens precede the patch tokens of each frame."""
        return 1 + self.num_register_tokens

    @classmethod
    def vggt_1b(cls) -> VGGTConfig:
        """VGGT-1B as published (facebook/VGGT-1B), track head left out."""
        return cls()

    @classmethod
    def from_reference_json(cls, meta: dict) -> VGGTConfig:
        """The config recorded in a reference sidecar (shared/reference/vggt_tiny.json): constructor arguments
        of the Aggregator / CameraHead / DPTHead steps; the DINOv2 depth is the number of blocks kept."""
        steps = {s["step"]: s for s in meta["construction"]}
        agg = next(s for s in steps.values() if "Aggregator" in s["what"])
        cam = next(s for s in steps.values() if "CameraHead" in s["what"])["args"]
        dpt = next(s for s in steps.values() if "point_head = DPTHead" in s["what"])["args"]
        d = agg["patch_embed_DinoVisionTransformer_args"]
        blocks = {
            k.split(".")[3] for k in meta["state_tensors"] if k.startswith("aggregator.patch_embed.blocks.")
        }
        a = agg["args"]
        dino = DinoV2Config(
            img_size=d["img_size"],
            patch_size=d["patch_size"],
            embed_dim=d["embed_dim"],
            depth=len(blocks),
            num_heads=d["num_heads"],
            mlp_ratio=d["mlp_ratio"],
            num_register_tokens=d["num_register_tokens"],
            init_values=d["init_values"],
            interpolate_offset=d["interpolate_offset"],
            interpolate_antialias=d["interpolate_antialias"],
            mask_token="aggregator.patch_embed.mask_token" in meta["state_tensors"],
        )
        return cls(
            img_size=a["img_size"],
            patch_size=a["patch_size"],
            dino=dino,
            embed_dim=a["embed_dim"],
            depth=a["depth"],
            num_heads=a["num_heads"],
            mlp_ratio=a["mlp_ratio"],
            num_register_tokens=a["num_register_tokens"],
            qk_norm=a["qk_norm"],
            rope_freq=a["rope_freq"],
            init_values=a["init_values"],
            camera_trunk_depth=cam["trunk_depth"],
            camera_num_heads=cam["num_heads"],
            camera_mlp_ratio=cam["mlp_ratio"],
            camera_init_values=cam["init_values"],
            dpt_features=dpt["features"],
            dpt_out_channels=tuple(dpt["out_channels"]),
            dpt_intermediate_layer_idx=tuple(dpt["intermediate_layer_idx"]),
        )

    @classmethod
    def tiny(cls) -> VGGTConfig:
        """The reference conformance model (shared/reference/vggt_tiny.json): ViT-S/14-reg patch embed cut to
        2 blocks, 2 frame/global pairs at width 384 (6 heads), a 1-block camera trunk, narrow DPT heads."""
        return cls(
            dino=DinoV2Config.of_size("small", depth=2),
            embed_dim=384,
            depth=2,
            num_heads=6,
            camera_trunk_depth=1,
            camera_num_heads=6,
            dpt_features=32,
            dpt_out_channels=(16, 32, 64, 64),
            dpt_intermediate_layer_idx=(0, 0, 1, 1),
        )
