"""``train.grad_clip_mode``: global-norm clipping is torch's; per-parameter clipping is DINO's and iBOT's
``utils.clip_gradients``, re-implemented here as their code reads (a Python loop reading each norm)."""

from __future__ import annotations

import pytest
import torch

from clrun.training.optim.clipping import clip_gradients


def dino_clip_gradients(parameters, clip: float) -> None:
    """facebookresearch/dino utils.py, clip_gradients (commit 7c446df), on a parameter list."""
    for p in parameters:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def parameters_with_gradients(dtype=torch.float64) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for shape, scale in (((8, 4), 10.0), ((4,), 0.01), ((3, 3, 2), 1.0), ((5,), 0.0)):
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        p.grad = torch.randn(shape, generator=generator, dtype=dtype) * scale
        out.append(p)
    out.append(torch.nn.Parameter(torch.zeros(2, dtype=dtype)))  # no gradient: skipped
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_per_parameter_clipping_is_dinos(dtype):
    ours, theirs = parameters_with_gradients(dtype), parameters_with_gradients(dtype)
    clip_gradients(ours, 3.0, "per_parameter")
    dino_clip_gradients(theirs, 3.0)
    for a, b in zip(ours, theirs):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)
    norms = [float(p.grad.norm()) for p in ours if p.grad is not None]
    assert norms[0] == pytest.approx(3.0, rel=1e-6) and norms[1] < 3.0  # the long one clipped, the short one kept
    short = parameters_with_gradients(dtype)[1].grad
    assert torch.equal(ours[1].grad, short)  # multiplied by exactly 1: bit for bit


def test_global_norm_clipping_is_torchs():
    ours, theirs = parameters_with_gradients(), parameters_with_gradients()
    clip_gradients(ours, 3.0, "global_norm")
    torch.nn.utils.clip_grad_norm_(theirs, 3.0)
    for a, b in zip(ours, theirs):
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours if p.grad is not None]))
    assert float(total) == pytest.approx(3.0, rel=1e-6)
