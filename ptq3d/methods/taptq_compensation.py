"""TAPTQ's Tail Relative Error and TRE-gated low-rank closed-form compensation (QwT-style); the method is in
ptq3d.methods.taptq, whose docstring states the equations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ptq3d.calibration.blockwise import replace_module
from ptq3d.methods.taptq_search import TwinQuantLinear

COMP_CHILD = "taptq_comp"

# ==================================================================================================
# 3. Tail Relative Error and the low-rank closed-form compensation
# ==================================================================================================


def tail_relative_error(y: torch.Tensor, y_hat: torch.Tensor, rho: float, eps: float = 1e-12) -> float:
    """TRE = sum_{i in topK} (y_i - y_hat_i)^2 / (sum_{i in topK} y_i^2 + eps), topK = the K = max(1,
    floor(rho * numel)) elements of largest |y| (y: FP output, any shape; y_hat: same shape)."""
    yf = y.detach().reshape(-1).double()
    k = max(1, int(math.floor(rho * yf.numel())))
    idx = torch.topk(yf.abs(), k, sorted=False).indices
    top = yf[idx]
    err = (top - y_hat.detach().reshape(-1).double()[idx]).pow(2).sum()
    return float(err / (top.pow(2).sum() + eps))


class LeastSquaresFit:
    """Streaming closed-form OLS of targets d [n, out] on [x, 1] (x [n, in]) via the normal equations (float64).

    solve() -> (W [in, out], b [out], r2): [W; b] = (X1^T X1 + lam I)^-1 X1^T D with lam = ridge * mean(diag),
    r2 = 1 - SS_res / SS_tot (over all target entries, SS_tot around the per-column mean).
    """

    def __init__(self, in_features: int, out_features: int):
        self.XtX = torch.zeros(in_features + 1, in_features + 1, dtype=torch.float64)
        self.XtD = torch.zeros(in_features + 1, out_features, dtype=torch.float64)
        self.dsum = torch.zeros(out_features, dtype=torch.float64)
        self.dsq = 0.0
        self.n = 0

    def add(self, x: torch.Tensor, d: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        d = d.detach().reshape(-1, d.shape[-1]).double()
        x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
        self.XtX += x1.T @ x1
        self.XtD += x1.T @ d
        self.dsum += d.sum(dim=0)
        self.dsq += float(d.pow(2).sum())
        self.n += x.shape[0]

    def solve(self, ridge: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, float]:
        A = self.XtX.clone()
        lam = ridge * float(torch.diagonal(A).mean()) if ridge > 0 else 0.0
        A.diagonal().add_(lam)
        try:
            sol = torch.cholesky_solve(self.XtD, torch.linalg.cholesky(A))
        except torch.linalg.LinAlgError:
            sol = torch.linalg.lstsq(A, self.XtD).solution
        ss_res = self.dsq - 2 * float((sol * self.XtD).sum()) + float((sol * (self.XtX @ sol)).sum())
        ss_tot = self.dsq - float(self.dsum.pow(2).sum()) / max(self.n, 1)
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
        return sol[:-1], sol[-1], r2


def low_rank_factors(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factorisation of W [in, out] (truncated SVD): A = U_r sqrt(S_r) [in, r], B = sqrt(S_r) V_r^T
    [r, out], so A @ B is the Eckart-Young optimum in Frobenius norm."""
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    r = max(1, min(int(rank), S.numel()))
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]


class LowRankCompensation(nn.Module):
    """c(x) = x A B + bias: x [..., in] -> [..., out]; A [in, r], B [r, out], bias [out] (float32 buffers).

    Attached to a sub-module as child `taptq_comp` with a forward hook (attach_compensation), so the
    sub-module's output becomes module(x) + c(x) with x its first positional input.
    """

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.register_buffer("A", torch.zeros(in_features, rank))
        self.register_buffer("B", torch.zeros(rank, out_features))
        self.register_buffer("bias", torch.zeros(out_features))

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor) -> LowRankCompensation:
        m = cls(A.shape[0], B.shape[1], A.shape[1])
        m.A.copy_(A.float())
        m.B.copy_(B.float())
        m.bias.copy_(bias.float())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() @ self.A) @ self.B + self.bias).to(x.dtype)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self(args[0])

    def config(self) -> dict[str, Any]:
        return {
            "kind": "taptq_lowrank",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> LowRankCompensation:
        return cls(cfg["in_features"], cfg["out_features"], cfg["rank"])

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


def attach_compensation(module: nn.Module, comp: LowRankCompensation) -> None:
    """Add `comp` as child `taptq_comp` of `module` and hook it onto module's output (replacing an old one)."""
    detach_compensation(module)
    module.add_module(COMP_CHILD, comp)
    module.register_forward_hook(comp.hook)


def detach_compensation(module: nn.Module) -> None:
    """Remove a compensation attached by attach_compensation (hook and child), if any."""
    for key, fn in list(module._forward_hooks.items()):
        if isinstance(getattr(fn, "__self__", None), LowRankCompensation):
            del module._forward_hooks[key]
    if COMP_CHILD in module._modules:
        del module._modules[COMP_CHILD]


def rebuild_taptq_modules(root: nn.Module, doc: dict[str, Any]) -> int:
    """Re-create TAPTQ's non-QuantLinear state in a model rebuilt from a save_quantized manifest `doc`, before
    load_state_dict: TwinQuantLinear at sites whose layer config has act_quantizer "twin_posgelu", and the
    compensation children/hooks listed in doc["stats"]["blocks"][i]["taptq_comp"] ({unit path: config}).
    Returns the number of modules rebuilt.

    Core hook this needs (ptq3d.methods.api.load_quantized, just before load_state_dict):
        rebuild = getattr(get_method(doc["method"]).fn, "rebuild_modules", None)
        if rebuild is not None: rebuild(model.module, doc)
    """
    n = 0
    for site, entry in doc.get("sites", {}).items():
        cfg = entry.get("layer", {})
        if cfg.get("act_quantizer") == "twin_posgelu":
            replace_module(root, site, TwinQuantLinear.from_config(cfg))
            n += 1
    for rec in doc.get("stats", {}).get("blocks", []):
        for path, cfg in (rec.get("taptq_comp") or {}).items():
            attach_compensation(root.get_submodule(path), LowRankCompensation.from_config(cfg))
            n += 1
    return n
