"""AlignmentPolicy: how predictions are put into the GT frame / scale before scoring, recorded with results.

The reference protocols disagree (notes/datasets_and_metrics.md sections 2.6 and 3), and the choice changes
absolute numbers and even rankings, so it is an explicit argument and part of every record (`to_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ptq3d.errors import ConfigError, unknown_name_error
from ptq3d.metrics.depth import DEPTH_ALIGNMENTS, DepthAlignment
from ptq3d.metrics.pointmap import POINT_ALIGNMENTS, PointAlignment
from ptq3d.metrics.pose import POSE_CONVENTIONS, PoseConvention

PointSource = Literal["world_points", "depth_unproject"]
POINT_SOURCES: tuple[str, ...] = ("world_points", "depth_unproject")
PixelCenters = Literal["half", "integer"]
PIXEL_CENTERS: tuple[str, ...] = ("half", "integer")


@dataclass(frozen=True)
class AlignmentPolicy:
    """Fields:
    pose_convention: "vggt" (first-camera alignment, inv(E_i) E_j; CO3D in VGGT / QuantVGGT) or "pi3".
    points: point-map alignment, see pointmap.evaluate_point_maps ("umeyama_icp" = Pi3 / FGQ / TAPTQ).
    point_source: "world_points" (the point head; QuantVGGT) or "depth_unproject" (predicted depth
        unprojected with the predicted cameras; FGQ / TAPTQ; needs predicted intrinsics).
    icp_threshold: ICP max correspondence distance in GT units (0.1 m; 100 for DTU mm).
    center_crop: central crop (px) of every view for the point metrics (CUT3R / QuantVGGT: 224), or None.
    max_points: score at most this many (seeded random) valid pixels per scene; None = all (reference).
    depth: "median" | "scale" (IRLS; CUT3R script) | "scale&shift" (Adam L1; Pi3 video depth) | "metric".
    max_depth, post_clip_max: GT validity limit and clamp of the aligned depth (reference semantics).
    depth_lr: Adam learning rate of the "scale&shift" fit (the reference's `lr` argument, 1e-4 by default); a
        per-dataset setting, since a fixed step budget of 1000 at lr 1e-4 moves the shift by at most ~0.1 GT
        units, which is not converged on datasets with large depth offsets.
    mono_depth: per-frame alignment of the monocular depth metrics (depth.mono.*): "scale" = IRLS (Pi3's
        monodepth config), "median" (the reference function's fallback), "scale&shift", "metric".
    fscore_threshold: distance (GT units) of points.precision / points.recall / points.fscore.
    gt_pixel_centers: where GT depth is unprojected when a scene has no GT points: "half" = pixel (i, j) at
        (j + 0.5, i + 0.5), ptq3d's intrinsics convention; "integer" = at (j, i), as the reference loaders do
        (dust3r-lineage `depthmap_to_camera_coordinates`, VGGT `unproject_depth_map_to_point_map`), which the
        reference presets follow. The shift is 0.5 px in u and v, i.e. z * 0.5 * sqrt(1/fx^2 + 1/fy^2) in space:
        measured on the real 7-Scenes sample (/work/shared/datasets/7scenes, stairs seq-01/02/04, 3 frames each,
        480x640, f = 525), 0.135 % of the depth, 2.2 / 2.6 / 2.9 mm mean per point (max 5.4 mm), and 1.4 / 2.0
        / 2.7 mm mean nearest-neighbour distance between the two GT clouds, against point-map Acc / Comp of
        tens of mm in the papers' tables (tests/metrics/test_metrics_reference_fixes.py checks the formula).
    seed: for the point subsampling.
    """

    pose_convention: PoseConvention = "vggt"
    points: PointAlignment = "umeyama_icp"
    point_source: PointSource = "world_points"
    icp_threshold: float = 0.1
    center_crop: int | None = None
    max_points: int | None = None
    depth: DepthAlignment = "scale"
    max_depth: float | None = None
    post_clip_max: float | None = None
    depth_lr: float = 1e-4
    mono_depth: DepthAlignment = "scale"
    fscore_threshold: float = 0.05
    gt_pixel_centers: PixelCenters = "half"
    seed: int = 0

    def __post_init__(self):
        for name, value, known in (
            ("pose_convention", self.pose_convention, POSE_CONVENTIONS),
            ("points", self.points, POINT_ALIGNMENTS),
            ("point_source", self.point_source, POINT_SOURCES),
            ("depth", self.depth, DEPTH_ALIGNMENTS),
            ("mono_depth", self.mono_depth, DEPTH_ALIGNMENTS),
            ("gt_pixel_centers", self.gt_pixel_centers, PIXEL_CENTERS),
        ):
            if value not in known:
                raise ConfigError(f"alignment policy: {name}='{value}' is not one of {', '.join(known)}")
        if self.max_points is not None and self.max_points < 3:
            raise ConfigError(f"alignment policy: max_points={self.max_points} must be >= 3 or None")
        for name in ("icp_threshold", "depth_lr", "fscore_threshold"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"alignment policy: {name}={getattr(self, name)} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignmentPolicy:
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise unknown_name_error("alignment policy field", k, known)
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AlignmentPolicy:
        """A named reference protocol (see PRESETS), optionally with fields overridden."""
        if name not in PRESETS:
            raise unknown_name_error("alignment preset", name, PRESETS)
        return replace(PRESETS[name], **overrides)


# every reference preset unprojects GT depth at integer pixel coordinates, as the reference loaders do
PRESETS: dict[str, AlignmentPolicy] = {
    # VGGT evaluation/test_co3d.py and QuantVGGT run_co3d.py (pose); VGGT paper point maps: Umeyama only
    "vggt": AlignmentPolicy(
        pose_convention="vggt", points="umeyama", depth="median", gt_pixel_centers="integer"
    ),
    # Pi3 evaluation branch: relpose/metric.py, mv_recon/eval.py (Umeyama + ICP 0.1), videodepth scale&shift,
    # monodepth per-frame IRLS scale
    "pi3": AlignmentPolicy(
        pose_convention="pi3",
        points="umeyama_icp",
        depth="scale&shift",
        mono_depth="scale",
        gt_pixel_centers="integer",
    ),  # fmt: skip
    # CUT3R / Spann3R / QuantVGGT run_7andN.py: median scale-shift in camera 1, 224 crop, ICP 0.1
    "cut3r": AlignmentPolicy(
        pose_convention="pi3",
        points="median_scale_shift_icp",
        center_crop=224,
        depth="scale",
        gt_pixel_centers="integer",
    ),  # fmt: skip
    "quantvggt": AlignmentPolicy(
        pose_convention="vggt",
        points="median_scale_shift_icp",
        center_crop=224,
        point_source="world_points",
        gt_pixel_centers="integer",
    ),  # fmt: skip
}
