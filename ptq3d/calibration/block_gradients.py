"""Squared gradients of scalar losses of the task outputs w.r.t. every block output: the one backward pass behind
FGQ's diagonal Fisher (ptq3d.methods.fgq) and the sensitivity estimates (ptq3d.calibration.sensitivity).

For each calibration scene n (run as a batch of one) and each loss L (a scalar of `GeometryModel.task_outputs`):

    G_L[l, c] = (1/N) sum_n sum_t (dL / dh_{l,t,c})^2            h_l: output of block l, [1, S, P, C_l]

A block that a loss does not depend on gets exact zeros. The model is left unchanged: gradients flow from the
images (the parameters' requires_grad flags are set off during the pass and restored), so frozen weights are fine
and no parameter gradient is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ptq3d.errors import ConfigError

LossFn = Callable[[dict[str, torch.Tensor], Any, int], dict[str, torch.Tensor]]


def squared_block_output_grads(
    model: Any, samples: Sequence[Any], scope: str, losses: LossFn
) -> dict[str, list[torch.Tensor]]:
    """loss name -> [G_L[l] per block in scope, each [C_l] float64 on the CPU] (module docstring).

    model: GeometryModel (FP). samples: SceneSamples (images [S, 3, H, W]). losses(outputs, sample, n) -> {name:
    scalar}: the losses of scene n from its task outputs (camera [1, S, D], depth [1, S, H, W], points
    [1, S, H, W, 3]); every scene must give the same names."""
    blocks = model.blocks(scope)
    if not blocks:
        raise ConfigError(f"model '{model.name}' has no blocks in scope '{scope}'")
    if not samples:
        raise ConfigError("the gradient pass needs at least one calibration scene")
    module = model.module
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    was_training = module.training
    outs: list[torch.Tensor | None] = [None] * len(blocks)
    acc: dict[str, list[torch.Tensor]] = {}

    def make_hook(i):
        def hook(_m, _args, out):
            outs[i] = out

        return hook

    handles = [b.module.register_forward_hook(make_hook(i)) for i, b in enumerate(blocks)]
    try:
        for p in params:
            p.requires_grad_(False)
        module.eval()
        for n, s in enumerate(samples):
            images = s.as_batch(model.device).requires_grad_(True)
            with torch.enable_grad():
                outs[:] = [None] * len(blocks)
                scalars = losses(model.task_outputs(images), s, n)
                if any(o is None for o in outs):
                    raise ConfigError(f"a block in scope '{scope}' did not run during task_outputs")
                if acc and set(scalars) != set(acc):
                    raise ConfigError(f"scene {n} gave losses {sorted(scalars)}, the first {sorted(acc)}")
                names = list(scalars)
                for k, name in enumerate(names):
                    grads = torch.autograd.grad(
                        scalars[name], outs, retain_graph=k < len(names) - 1, allow_unused=True
                    )
                    per_block = acc.setdefault(
                        name, [torch.zeros(o.shape[-1], dtype=torch.float64) for o in outs]
                    )
                    for i, g in enumerate(grads):
                        if g is not None:  # None: this loss does not depend on block i
                            per_block[i] += g.detach().double().pow(2).reshape(-1, g.shape[-1]).sum(0).cpu()
            del scalars
            outs[:] = [None] * len(blocks)
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
        module.train(was_training)
    return {name: [g / len(samples) for g in per_block] for name, per_block in acc.items()}
