"""Pi3 in ptq3d: model (official module tree and key names), config, heads and the GeometryModel adapter.

`PI3_MODELS` maps registry names to (builder, description); builders return a randomly initialised
`Pi3` (they also work under `with torch.device("meta")`).
"""

from __future__ import annotations

from ptq3d.models.pi3.adapter import Pi3Adapter, invert_rigid
from ptq3d.models.pi3.config import Pi3Config, Pi3EncoderConfig, Pi3HeadDecoderConfig
from ptq3d.models.pi3.model import Pi3


def build_pi3() -> Pi3:
    """The published Pi3 architecture (yyfz233/Pi3 checkpoint layout), random init."""
    return Pi3(Pi3Config())


def build_pi3_tiny() -> Pi3:
    """The tiny conformance Pi3 of shared/reference/pi3_tiny.json, random init."""
    return Pi3(Pi3Config.tiny())


PI3_MODELS = {
    "pi3": (
        build_pi3,
        "Pi3 (yyfz233/Pi3): DINOv2 ViT-L/14-reg encoder, 36 alternating frame/global decoder blocks, "
        "959M params; camera-to-world poses and local point maps",
    ),
    "pi3-tiny": (
        build_pi3_tiny,
        "tiny Pi3 conformance model (ViT-S/14-reg cut to 2 blocks, 4 decoder blocks at 384-d, 13M params)",
    ),
}

__all__ = [
    "PI3_MODELS",
    "Pi3",
    "Pi3Adapter",
    "Pi3Config",
    "Pi3EncoderConfig",
    "Pi3HeadDecoderConfig",
    "build_pi3",
    "build_pi3_tiny",
    "invert_rigid",
]
