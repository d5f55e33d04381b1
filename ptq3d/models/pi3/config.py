"""Configuration of Pi3 (yyfz/Pi3, `pi3/models/pi3.py::Pi3`) and of its tiny conformance variant.

`Pi3Config()` is the published model (decoder_size "large", ~959 M parameters); `Pi3Config.tiny()` is the
13 M-parameter model the reference goldens were made with (shared/reference/pi3_tiny.json): the same module
tree and key names at width 384, with the encoder truncated to 2 blocks and the decoder to 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pi3EncoderConfig:
    """DINOv2 ViT/14 with 4 registers (Pi3 builds `dinov2_vitl14_reg`, then deletes `mask_token`).

    The DINOv2 hub `*_reg` constructors set interpolate_antialias=True and interpolate_offset=0.0
    (the class defaults False / 0.1 are overridden); pos_embed is resized from img_size/patch_size
    patches per side with bicubic interpolation whenever the input grid differs.
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    init_values: float = 1.0  # LayerScale init
    norm_eps: float = 1e-6
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0


@dataclass(frozen=True)
class Pi3HeadDecoderConfig:
    """A `TransformerDecoder`: Linear(in -> dec_embed_dim), `depth` RoPE blocks (no qk-norm, no LayerScale),
    Linear(dec_embed_dim -> out_dim). Runs frame-wise on [B*S, P, C]."""

    dec_embed_dim: int = 1024
    depth: int = 5
    num_heads: int = 16
    mlp_ratio: float = 4.0
    out_dim: int = 1024


@dataclass(frozen=True)
class Pi3Config:
    """Pi3 hyper-parameters. Defaults are the published checkpoint (`Pi3()` = decoder_size 'large').

    dec_*: the alternating frame/global `BlockRope` stack (`decoder.i`; even i = frame, odd i = global),
    pre-norm with LayerNorm(eps=norm_eps), qk-norm (LayerNorm(head_dim), eps 1e-5) and LayerScale.
    num_register_tokens: Pi3's own 5 register tokens shared by every frame (not the encoder's 4).
    """

    img_size: int = 518
    patch_size: int = 14
    encoder: Pi3EncoderConfig = field(default_factory=Pi3EncoderConfig)
    dec_embed_dim: int = 1024
    dec_num_heads: int = 16
    dec_depth: int = 36
    dec_mlp_ratio: float = 4.0
    dec_init_values: float = 0.01
    dec_qk_norm: bool = True
    norm_eps: float = 1e-6
    num_register_tokens: int = 5
    rope_freq: float = 100.0
    point_decoder: Pi3HeadDecoderConfig = field(default_factory=lambda: Pi3HeadDecoderConfig(out_dim=1024))
    camera_decoder: Pi3HeadDecoderConfig = field(default_factory=lambda: Pi3HeadDecoderConfig(out_dim=512))

    def __post_init__(self) -> None:
        if self.dec_depth < 2:
            raise ValueError(
                f"Pi3Config.dec_depth must be >= 2 (the output joins the last two blocks), got {self.dec_depth}"
            )
        if self.dec_embed_dim % self.dec_num_heads:
            raise ValueError(
                f"Pi3Config.dec_embed_dim {self.dec_embed_dim} is not divisible by dec_num_heads {self.dec_num_heads}"
            )

    @classmethod
    def tiny(cls) -> Pi3Config:
        """The reference conformance model (shared/reference/pi3_tiny.json): ViT-S/14-reg encoder cut to 2
        blocks, the first 4 'small' decoder blocks (384-d, 6 heads), and narrow head decoders."""
        return cls(
            encoder=Pi3EncoderConfig(embed_dim=384, depth=2, num_heads=6),
            dec_embed_dim=384,
            dec_num_heads=6,
            dec_depth=4,
            point_decoder=Pi3HeadDecoderConfig(dec_embed_dim=128, depth=2, num_heads=2, out_dim=96),
            camera_decoder=Pi3HeadDecoderConfig(dec_embed_dim=128, depth=2, num_heads=2, out_dim=64),
        )
