"""QuaRot (Ashkboos et al. 2024, spcl/QuaRot): rotate the residual stream so no linear sees outlier channels, then
quantize the weights with GPTQ (or RTN) under MSE weight clipping.

Two constructions, `rotation`:

"residual" (default, QuaRot's defining construction, per block of a VGGT / Pi3 / DINOv2 pre-norm Block
    x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))):
    1. LayerNorm fusion: norm1's gain gamma and bias beta are folded into attn.qkv (W <- W diag(gamma),
       b <- b + W beta), norm2's into mlp.fc1; the norms keep weight 1, bias 0.
    2. LayerScale fusion: ls1's gamma into the rows of attn.proj (W <- diag(g) W, b <- g * b), ls2's into mlp.fc2;
       the LayerScales keep gamma 1 (an elementwise scale does not commute with a rotation).
    3. The residual stream is rotated, z = x Q, with Q [C, C] orthogonal: qkv and fc1 read it (W <- W Q), proj
       and fc2 write it (W <- Q^T W, b <- b Q). No online operation inside the block.
    LayerNorm's mean subtraction: QuaRot / SliceGPT bake the centring into every residual writer and the
    embeddings so that LN becomes RMSNorm, which commutes with any rotation. We keep LayerNorm and instead take
    Q in the stabiliser of the all-ones vector (Q 1 = 1, hence 1^T Q = 1^T): then mean(x Q) = mean(x) and
    (x - mean(x) 1^T) Q = x Q - mean(x) 1^T, so LN0(x Q) = LN0(x) Q exactly (LN0: LayerNorm without affine), and
    the stream keeps its mean, so nothing is lost at the block boundary. Q = A R: R the random Hadamard
    diag(signs) H_C / sqrt(C) (QuaRot's `random_hadamard_matrix`), A the Householder reflection mapping R 1 to
    1. Q acts as a random rotation on the (C-1)-dimensional complement of 1, where outliers live.
    4. The boundary: in a full deployment the Q^T of one block and the Q of the next cancel and Q is fused into
       the embedding and the heads' readers. VGGT's heads read intermediate block outputs (and Pi3's decoder
       output), so here each block carries its Q (a `ResidualRotation` child, `quarot_residual`) and rotates
       its input / un-rotates its output with forward hooks: exact, model-agnostic, two C x C matmuls per
       block that a deployment folds away.
    attn.proj and mlp.fc2 inputs (the attention output, the GELU output) are not on the residual stream; as
    QuaRot's online Hadamards (online_full_had before down_proj; the V->O head-wise plus cross-head Hadamard
    before o_proj, together a full Hadamard of the proj input) they get an online random Hadamard each.
    Blocks without this layout (no norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2) fall back to "per_linear".

"per_linear" (the QuantVGGT-style variant): every quantized linear gets its own online random Hadamard
    R = diag(signs) H / sqrt(n) on its input and W' = W R, so x W^T = (x R)(W R)^T.

Weights: GPTQ (default, `weight_method`) on the rotated inputs, or RTN; `mse_clip=True` (default) runs QuaRot's
`--w_clip` search (the GPTQ repo's Quantizer(mse=True): p in 1, 0.99, ..., 0.21, least sum |w - q(w)|^2.4 per
row) on the rotated weights, for RTN and GPTQ alike; symmetric scale max|w| / (2^(b-1) - 1) (QuaRot's
WeightQuantizer). Activations: the scheme's (per-token dynamic by default, as QuaRot).

Presets: "paper" (default: residual rotation, GPTQ, MSE clipping) and "code" (spcl/QuaRot's argparse defaults:
`--w_clip` off). Sizes: n = m * 2^k; VGGT-1B's 1024 and 4096 are powers of two; the tiny widths 384 = 12 * 32
and 1536 = 12 * 128 use H_12 (Paley) kron H_{2^k} (ptq3d.quant.hadamard). Signs are seeded per site (or per
block for Q) from `seed` and the name, so a run is reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.methods.gptq import GPTQConfig, gptq_calibrate_block
from ptq3d.methods.registry import register_method
from ptq3d.methods.rtn import rtn_linear
from ptq3d.quant.hadamard import hadamard_transform
from ptq3d.quant.transforms import HadamardRotation

ROTATIONS = ("residual", "per_linear")
RESIDUAL_MODULE = "quarot_residual"
# the linears of a pre-norm block the residual construction needs (relative names)
READERS = {"attn.qkv": "norm1", "mlp.fc1": "norm2"}
WRITERS = {"attn.proj": "ls1", "mlp.fc2": "ls2"}


@dataclass
class QuaRotConfig(GPTQConfig):
    """rotation: "residual" (QuaRot's residual-stream rotation with LayerNorm fusion) or "per_linear" (an online
    Hadamard per linear, QuantVGGT-style). weight_method: "gptq" (default, needs calibration) or "rtn".
    mse_clip: QuaRot's --w_clip MSE clipping search (default on, the paper's recipe). seed: base seed.
    The GPTQ fields apply when weight_method is "gptq"."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "code": {"mse_clip": False}}
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"builder": "random", "scope": "aggregator"},
        "code": {"builder": "random", "scope": "aggregator"},
    }

    sym_rule: str = "absmax"  # QuaRot's WeightQuantizer: max|w| / (2^(b-1) - 1)
    mse_clip: bool = True
    rotation: str = "residual"
    weight_method: str = "gptq"
    seed: int = 0

    def needs_calibration(self) -> bool:
        """GPTQ weights need calibration inputs whatever the activations (see MethodSpec.needs_calibration)."""
        return self.weight_method == "gptq"


def site_seed(seed: int, site: str) -> int:
    """A stable per-site seed (independent of Python's hash randomisation)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{site}".encode()).digest()[:4], "little")


def rotation_for(seed: int, only: set[str] | None = None):
    """make(site, linear) -> the site's online HadamardRotation, or None for sites whose rel name (the part after
    the block) is not in `only` (None: every site)."""

    def make(site: str, linear: nn.Linear) -> HadamardRotation | None:
        if only is not None and not any(site.endswith("." + rel) for rel in only):
            return None
        return HadamardRotation(linear.in_features, seed=site_seed(seed, site))

    return make


# --- the residual-stream rotation ------------------------------------------------------------------


def ones_fixing_rotation(n: int, seed: int) -> torch.Tensor:
    """Q [n, n] float64 orthogonal with Q 1 = 1 (and 1^T Q = 1^T): Q = A R, R = diag(signs) H_n / sqrt(n) the
    random Hadamard, A = I - 2 w w^T the Householder reflection mapping R u to u (u = 1 / sqrt(n))."""
    h = HadamardRotation(n, seed=seed)
    R = hadamard_transform(torch.eye(n, dtype=torch.float64), h.signs, factor=h.factor)  # rows of I @ R
    u = torch.full((n, 1), 1.0 / n**0.5, dtype=torch.float64)
    v = R @ u - u
    if float(v.norm()) < 1e-12:
        return R
    w = v / v.norm()
    return R - 2 * w @ (w.T @ R)


class ResidualRotation(nn.Module):
    """Holds a block's Q [C, C] and rotates its input (x -> x Q) and un-rotates its output (y -> y Q^T) through
    forward hooks on the block (bound methods, so deep copies keep working)."""

    def __init__(self, Q: torch.Tensor):
        super().__init__()
        self.register_buffer("Q", Q.detach().clone())

    def rotate_input(self, _block: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x @ self.Q.to(x.dtype), *args[1:])

    def unrotate_output(self, _block: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out @ self.Q.to(out.dtype).T

    def attach(self, block: nn.Module) -> None:
        block.add_module(RESIDUAL_MODULE, self)
        block.register_forward_pre_hook(self.rotate_input)
        block.register_forward_hook(self.unrotate_output)


def _get(block: nn.Module, name: str) -> nn.Module | None:
    try:
        return block.get_submodule(name)
    except AttributeError:
        return None


def has_residual_layout(block: nn.Module) -> bool:
    """Whether `block` is a pre-norm Block with LayerNorm norm1/norm2 and the four linears."""
    for lin in (*READERS, *WRITERS):
        if not isinstance(_get(block, lin), nn.Linear):
            return False
    return all(isinstance(_get(block, n), nn.LayerNorm) for n in READERS.values())


@torch.no_grad()
def rotate_block_residual(block: nn.Module, Q: torch.Tensor) -> None:
    """Fuse the LayerNorms and LayerScales and rotate the residual stream of one pre-norm block by Q (module
    docstring, steps 1-4), in place; the block computes the same function (in exact arithmetic) once its
    input is x Q and its output is multiplied by Q^T, which `ResidualRotation.attach` installs."""
    if not has_residual_layout(block):
        raise ConfigError(
            f"quarot rotation 'residual': {type(block).__name__} lacks norm1/attn.qkv/... (layout)"
        )
    Qd = Q.double()
    for lin_name, norm_name in READERS.items():
        lin, norm = block.get_submodule(lin_name), block.get_submodule(norm_name)
        W = lin.weight.double()
        gamma = (
            norm.weight.double() if norm.weight is not None else torch.ones(W.shape[1], dtype=torch.float64)
        )
        beta = norm.bias.double() if norm.bias is not None else torch.zeros(W.shape[1], dtype=torch.float64)
        bias = (
            lin.bias.double() if lin.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
        ) + W @ beta
        if lin.bias is None and bool(beta.abs().max() > 0):
            lin.bias = nn.Parameter(torch.zeros(W.shape[0], dtype=lin.weight.dtype, device=lin.weight.device))
        lin.weight.copy_(((W * gamma.view(1, -1)) @ Qd).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_(bias.to(lin.bias.dtype))
        if norm.weight is not None:
            norm.weight.fill_(1.0)
        if norm.bias is not None:
            norm.bias.zero_()
    for lin_name, ls_name in WRITERS.items():
        lin = block.get_submodule(lin_name)
        ls = _get(block, ls_name)
        W = lin.weight.double()
        b = lin.bias.double() if lin.bias is not None else None
        g = getattr(ls, "gamma", None)
        if isinstance(g, torch.Tensor):
            W = W * g.double().view(-1, 1)
            b = None if b is None else b * g.double()
            g.fill_(1.0)
        lin.weight.copy_((Qd.T @ W).to(lin.weight.dtype))
        if b is not None:
            lin.bias.copy_((b @ Qd).to(lin.bias.dtype))


def block_rotation_seed(seed: int, block_name: str) -> int:
    return site_seed(seed, "residual:" + block_name)


def apply_residual_rotation(model, scope: str, seed: int) -> list[str]:
    """Rotate the residual stream of every block in scope that has the pre-norm layout (see module docstring).
    Returns the names of the rotated blocks (the others fall back to per-linear rotations)."""
    done = []
    for b in model.blocks(scope):
        if not has_residual_layout(b.module):
            continue
        width = b.module.get_submodule("attn.qkv").in_features
        Q = ones_fixing_rotation(width, block_rotation_seed(seed, b.name))
        rotate_block_residual(b.module, Q)
        w = b.module.get_submodule("attn.qkv").weight
        ResidualRotation(Q.to(w.dtype)).to(w.device).attach(b.module)
        done.append(b.name)
    return done


def rebuild_quarot_modules(root: nn.Module, doc: dict) -> int:
    """load_quantized hook: re-create the ResidualRotation of every rotated block (its Q comes from the state)."""
    blocks = ((doc.get("stats") or {}).get("extra") or {}).get("quarot_residual_blocks") or []
    for name in blocks:
        block = root.get_submodule(name)
        width = block.get_submodule("attn.qkv").in_features
        ResidualRotation(torch.eye(width)).attach(block)
    return len(blocks)


@register_method(
    "quarot", config=QuaRotConfig, requires_calibration="static_act", propagate="quantized", version="2"
)
def quantize_quarot(model, calibration, scheme, config: QuaRotConfig, ctx) -> None:
    """QuaRot: residual-stream rotation with LayerNorm fusion (or per-linear Hadamards), then GPTQ or RTN weights."""
    if config.weight_method not in ("rtn", "gptq"):
        raise ConfigError(f"quarot weight_method={config.weight_method!r}: use 'rtn' or 'gptq'")
    if config.rotation not in ROTATIONS:
        raise ConfigError(f"quarot rotation={config.rotation!r}: use one of {', '.join(ROTATIONS)}")
    rotated: set[str] = set()
    if config.rotation == "residual":
        rotated = set(apply_residual_rotation(model, ctx.scope, config.seed))
        ctx.stats.extra["quarot_residual_blocks"] = sorted(rotated)  # read back by rebuild_quarot_modules
    per_linear = rotation_for(config.seed)
    online_only = rotation_for(config.seed, set(WRITERS))

    def make(site: str, linear: nn.Linear) -> HadamardRotation | None:
        block = next((b for b in rotated if site.startswith(b + ".")), None)
        return online_only(site, linear) if block is not None else per_linear(site, linear)

    if config.weight_method == "gptq":  # calibration is guaranteed: QuaRotConfig.needs_calibration
        ctx.blockwise(calibration, lambda bd: gptq_calibrate_block(bd, config, make))
        return
    if calibration is None:
        for site, lin in ctx.sites().items():
            with ctx.timed(site):
                q = rtn_linear(lin, ctx.scheme_for(site), config, make(site, lin))
            ctx.replace(site, q)
        return

    def calibrate_block(bd) -> None:
        for rel, lin in bd.linears().items():
            with ctx.timed(bd.site(rel)):
                q = rtn_linear(lin, bd.scheme_for(rel), config, make(bd.site(rel), lin))
            bd.replace(rel, q)
        bd.calibrate_static_acts()

    ctx.blockwise(calibration, calibrate_block)


quantize_quarot.rebuild_modules = rebuild_quarot_modules
