"""LeJEPA: invariance to the global views' mean embedding plus SIGReg, a sliced test of Gaussianity."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from clrun import ComponentError, distributed, loss_kit


class SIGReg(nn.Module):
    r"""Sketched isotropic Gaussian regularization (Balestriero and LeCun 2025, "LeJEPA", arXiv:2511.08544).

    For embeddings ``x`` of shape ``(V, N, D)`` (``V`` views of the same ``N`` images) and ``K`` random
    unit directions ``a_k`` (``directions``), each view's projections ``x a_k`` are compared with N(0, 1)
    by the Epps-Pulley statistic

        T_k = N integral_{-t_max}^{t_max} |phi_N(t) - exp(-t^2 / 2)|^2 exp(-t^2 / 2) dt,
        phi_N(t) = (1 / N) sum_n exp(i t x_n . a_k)      (the empirical characteristic function)

    by the trapezoid rule over ``knots`` points of ``[0, t_max]`` with doubled weights (the integrand is
    even), as the authors' code does; SIGReg is the mean of ``T_k`` over views and directions. An
    isotropic Gaussian gives ``T`` of order 1 whatever ``N``; a collapsed or stretched distribution makes
    it grow like ``N``.

    Across ranks the characteristic function is averaged with ``clrun.distributed.average`` (with
    gradients) and ``N`` is the global batch: the statistic and every rank's gradient are those of one
    process on the whole batch.
    """

    def __init__(self, num_slices: int = 1024, knots: int = 17, t_max: float = 3.0):
        super().__init__()
        self.num_slices = num_slices
        t = torch.linspace(0, t_max, knots, dtype=torch.float64)
        gauss = torch.exp(-t.square() / 2)
        dt = t_max / (knots - 1)
        weights = torch.full((knots,), 2 * dt, dtype=torch.float64)
        weights[[0, -1]] = dt
        # Constants, not state: rebuilt from the arguments, so they stay out of checkpoints.
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("gauss", gauss, persistent=False)
        self.register_buffer("weights", weights * gauss, persistent=False)

    def directions(self, dim: int, step: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``(dim, num_slices)`` unit columns drawn from a generator seeded with ``step``: the same on every
        rank and after a resume, new at every step (the authors seed with their global step too)."""
        generator = torch.Generator().manual_seed(step)
        a = torch.randn(dim, self.num_slices, generator=generator, dtype=torch.float64)
        return (a / a.norm(dim=0)).to(device=device, dtype=dtype)

    def forward(self, x: Tensor, step: int) -> Tensor:
        """The statistic per view and direction, ``(V, num_slices)``, for ``x`` of shape ``(V, N, D)``."""
        dtype = x.dtype
        t, gauss, weights = (b.to(dtype) for b in (self.t, self.gauss, self.weights))
        xt = (x @ self.directions(x.shape[-1], step, dtype, x.device)).unsqueeze(-1) * t  # (V, N, K, knots)
        # One collective for both parts of the characteristic function.
        cf = distributed.average(torch.stack([xt.cos().mean(dim=1), xt.sin().mean(dim=1)]))
        error = (cf[0] - gauss).square() + cf[1].square()  # |phi_N(t) - exp(-t^2/2)|^2
        return (error @ weights) * (x.shape[1] * distributed.world_size())


class LeJEPALoss(nn.Module):
    r"""LeJEPA (Balestriero and LeCun 2025): no teacher, no stop-gradient, no negatives.

    With ``z_v`` the projections of view ``v`` (every view, local ones included; ``(N, D)`` each) and
    ``c`` the mean of the *global* views' projections (per image):

        invariance = mean over views, images and dimensions of (c - z_v)^2
        loss       = (1 - lambd) invariance + lambd SIGReg(z)

    SIGReg (:class:`SIGReg`) pulls every view's embeddings towards an isotropic Gaussian, which keeps
    them from collapsing. The math runs in at least float32, also under autocast.

    Args:
        lambd:      the trade-off in ``(0, 1)`` (the paper's default 0.05; its minimal example 0.02).
        num_slices: random directions per step (1024, as in the authors' library).
        knots:      quadrature points on ``[0, t_max]``, odd (17).
        t_max:      the integration range (3).

    Returns: ``"loss"`` and the detached metrics ``invariance`` and ``sigreg``.
    """

    main_metric = "sigreg"
    owner = "clrun/lejepa"

    def __init__(self, lambd: float = 0.05, num_slices: int = 1024, knots: int = 17, t_max: float = 3.0):
        super().__init__()
        self.lambd = loss_kit.float_arg(self.owner, "lambd", lambd, hint=" (the paper uses 0.05)")
        if self.lambd >= 1:
            raise ComponentError(f"{self.owner}: lambd must be < 1 (the paper uses 0.05), got {lambd!r}", argument="lambd")
        num_slices = loss_kit.int_arg(self.owner, "num_slices", num_slices, 1, " (the authors use 1024)")
        knots = loss_kit.int_arg(self.owner, "knots", knots, 3, " and odd (the authors use 17)")
        if knots % 2 == 0:
            raise ComponentError(f"{self.owner}: knots must be an integer >= 3 and odd (the authors use 17), got {knots!r}",
                                 argument="knots")
        t_max = loss_kit.float_arg(self.owner, "t_max", t_max, hint=" (the authors use 3)")
        self.sigreg = SIGReg(num_slices, knots, t_max)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        global_views = loss_kit.global_view_indices(self.owner, out, minimum=1)
        if len(out.projections) < 2:
            raise ComponentError(
                f"{self.owner} compares at least 2 views of every image; the recipe makes 1. "
                "Use a view section with count 2 or more."
            )
        n, _ = loss_kit.same_shape(self.owner, "every view's projections", out.projections)
        loss_kit.at_least_two_images(self.owner, n, "measure how Gaussian the embeddings are")
        dtype = loss_kit.compute_dtype(out.projections)
        with loss_kit.autocast_off(out.projections[0]):
            z = torch.stack(out.projections).to(dtype)  # (V, N, D)
            center = z[global_views].mean(dim=0)
            invariance = (center - z).square().mean()
            sigreg = self.sigreg(z, out.step).mean()
            loss = (1 - self.lambd) * invariance + self.lambd * sigreg
        return {"loss": loss, "invariance": invariance.detach(), "sigreg": sigreg.detach()}
