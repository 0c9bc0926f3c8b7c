"""LeJEPA: invariance to the global views' mean embedding plus SIGReg, a sliced test of Gaussianity."""

from __future__ import annotations

from typing import Annotated, Any, Sequence

import torch
from torch import Tensor, nn

from clrun import ComponentError, Range, checked, distributed, loss_kit


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
        # Drawn on the host (the same numbers on every device), uploaded without waiting for the device's queue.
        return (a / a.norm(dim=0)).to(dtype=dtype).to(device=device, non_blocking=True)

    def forward(self, x: Tensor, step: int) -> Tensor:
        """The statistic per view and direction, ``(V, num_slices)``, for ``x`` of shape ``(V, N, D)``."""
        dtype = x.dtype
        t, gauss, weights = (b.to(dtype) for b in (self.t, self.gauss, self.weights))
        xt = (x @ self.directions(x.shape[-1], step, dtype, x.device)).unsqueeze(-1) * t  # (V, N, K, knots)
        # One collective for both parts of the characteristic function.
        cf = distributed.average(torch.stack([xt.cos().mean(dim=1), xt.sin().mean(dim=1)]))
        error = (cf[0] - gauss).square() + cf[1].square()  # |phi_N(t) - exp(-t^2/2)|^2
        return (error @ weights) * (x.shape[1] * distributed.world_size())


def lejepa(views: Sequence[Tensor], global_views: Sequence[int], sigreg: SIGReg, step: int, lambd: float
           ) -> tuple[Tensor, dict[str, Tensor]]:
    """LeJEPA's loss of every view's projections ``(N, D)``: invariance to the mean of the ``global_views``'
    plus ``sigreg`` (its directions drawn for ``step``), weighted by ``lambd``. The scalar loss and the
    detached metrics ``invariance`` and ``sigreg`` (see :class:`LeJEPALoss`); at least float32."""
    dtype = loss_kit.compute_dtype(views)
    with loss_kit.autocast_off(views[0]):
        z = torch.stack(list(views)).to(dtype)  # (V, N, D)
        center = z[list(global_views)].mean(dim=0)
        invariance = (center - z).square().mean()
        statistic = sigreg(z, step).mean()
        loss = (1 - lambd) * invariance + lambd * statistic
    return loss, {"invariance": invariance.detach(), "sigreg": statistic.detach()}


@checked
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
    reads = frozenset({"online.projections"})

    def __init__(self, lambd: Annotated[float, Range(min=0, max=1, exclusive_min=True, exclusive_max=True,
                                                     hint="the paper uses 0.05")] = 0.05,
                 num_slices: Annotated[int, Range(min=1, hint="the authors use 1024")] = 1024,
                 knots: Annotated[int, Range(min=3, hint="odd; the authors use 17")] = 17,
                 t_max: Annotated[float, Range(min=0, exclusive_min=True, hint="the authors use 3")] = 3.0):
        super().__init__()
        self.lambd = float(lambd)
        if knots % 2 == 0:  # the trapezoid weights assume an odd count (the authors' quadrature)
            raise ComponentError(f"{self.component_name}: knots must be odd (the authors use 17), got {knots!r}",
                                 argument="knots")
        self.sigreg = SIGReg(num_slices, knots, float(t_max))

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"

    def forward(self, out: Any) -> dict[str, Tensor]:
        global_views = loss_kit.global_view_indices(self, out, minimum=1)
        if len(out.projections) < 2:
            raise ComponentError(
                f"{self.component_name} compares at least 2 views of every image; the recipe makes 1. "
                "Use a view section with count 2 or more."
            )
        n, _ = loss_kit.same_shape(self, "every view's projections", out.projections)
        loss_kit.at_least_two_images(self, n, "measure how Gaussian the embeddings are")
        loss, metrics = lejepa(out.projections, global_views, self.sigreg, out.step, self.lambd)
        return {"loss": loss, **metrics}
