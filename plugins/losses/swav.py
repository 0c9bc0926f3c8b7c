"""SwAV's loss: swapped prediction of Sinkhorn-Knopp cluster codes over learned prototypes."""

from __future__ import annotations

from typing import Annotated, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clrun import ComponentError, Range, checked, loss_kit
from clrun.plugins.losses.sinkhorn import sinkhorn_knopp


def swav(views: Sequence[Tensor], prototypes: Tensor, global_views: Sequence[int], temperature: float,
         epsilon: float, sinkhorn_iterations: int, queue: Tensor | None = None
         ) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
    """SwAV's swapped prediction: every view's projection ``(N, D)`` scored against the unit ``prototypes``
    ``(K, D)``; each global view's Sinkhorn-Knopp codes are predicted from the other views. ``queue``
    (``(global views, L, D)``): past unit projections whose scores join the codes' Sinkhorn-Knopp.
    Returns the scalar loss, the detached metrics ``code_entropy`` and ``prototypes_used`` (see
    :class:`SwAVLoss`), and the unit projections (for the queue). At least float32, also under autocast."""
    n = views[0].shape[0]
    dtype = loss_kit.compute_dtype(views)  # fp16/bf16 -> fp32, fp64 stays
    with loss_kit.autocast_off(views[0]):
        w = prototypes.to(dtype)
        z = [F.normalize(v.to(dtype), dim=1) for v in views]
        scores = [zv @ w.T for zv in z]  # (N, K) per view
        with torch.no_grad():
            codes = []
            for slot, i in enumerate(global_views):
                s = scores[i].detach()
                if queue is not None:
                    s = torch.cat([s, queue[slot].to(dtype) @ w.detach().T])
                codes.append(sinkhorn_knopp(s, sinkhorn_iterations, epsilon)[:n])
        per_global = []
        for q, i in zip(codes, global_views):
            swapped = [
                -(q * F.log_softmax(scores[v] / temperature, dim=1)).sum(dim=1).mean()
                for v in range(len(views))
                if v != i
            ]
            per_global.append(torch.stack(swapped).mean())
        loss = torch.stack(per_global).mean()

        with torch.no_grad():
            all_codes = torch.cat(codes)
            mean_code = all_codes.mean(dim=0)
            entropy = -(mean_code * mean_code.clamp_min(torch.finfo(dtype).tiny).log()).sum()
            used = torch.zeros(len(prototypes), dtype=torch.bool, device=all_codes.device)
            used[all_codes.argmax(dim=1)] = True
    return loss, {"code_entropy": entropy, "prototypes_used": used.to(dtype).mean()}, z


@checked
class SwAVLoss(nn.Module):
    r"""SwAV: predict the cluster code of one view from another view, codes from Sinkhorn-Knopp.

    Caron, Misra, Mairal, Goyal, Bojanowski and Joulin (2020), "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882), eqs. (2)-(3) and
    the official code (facebookresearch/swav, main_swav.py), whose defaults these are.

    Input: the online projections of all views (``out.projections``, each ``(N, D)``, global and
    local; row ``n`` of every view comes from image ``n``). The loss owns ``K`` prototypes
    ``C = self.prototypes.weight`` ``(K, D)``, an ``nn.Linear(D, K, bias=False)`` trained with the
    network. In training mode every forward first rescales the prototype rows to unit length in
    place (as the official code does before each iteration). Then, with ``z_v = normalize(view v)``
    and ``s_v = z_v C^T`` ``(N, K)``:

        q_i    = sinkhorn_knopp(s_i, sinkhorn_iterations, epsilon)   for every global view i
                 (no gradient; each row sums to 1, each column to about N / K)
        l_i    = mean_{views v != i} mean_n ( -sum_k q_i[n, k] log softmax(s_v[n] / temperature)[k] )
        loss   = mean over the global views i of l_i

    While ``out.step < freeze_prototypes_steps`` the prototypes get no gradient (the scores use the
    detached weight, so ``prototypes.weight.grad`` stays ``None`` and the optimizer skips it), as
    the official ``freeze_prototypes_niters``.

    Optional queue (``queue_length > 0``, for small batches): the buffer ``queue``
    ``(queue_views, queue_length, D)`` holds the newest normalized projections of each global view
    (row 0 the newest) and ``queue_fill`` how many rows are filled. When ``out.step >=
    queue_start_step`` and the queue is full, the scores of view ``i``'s queue rows (with the current
    prototypes) are appended to the batch's scores before Sinkhorn-Knopp, and the codes of the batch's
    rows are kept. After the loss, in training mode, the batch's ``z_i`` go in front:
    ``queue[i] = cat(z_i, queue[i])[:queue_length]`` (the official ``queue[i, bs:] = queue[i, :-bs];
    queue[i, :bs] = z``). Filling starts with the first step, so the queue is in use from
    ``queue_start_step`` on once ``queue_length / N`` steps have passed. The prototypes, ``queue`` and
    ``queue_fill`` are all in ``state_dict()``.

    Across ranks (torchrun): the codes are computed by a Sinkhorn-Knopp whose sums over samples run
    over all ranks (the official ``distributed_sinkhorn``), and the swapped-prediction loss is a mean
    over each rank's images, so DDP's mean of the gradients (the prototypes' included) is the global
    batch's gradient. The queue is per rank, as in the official code: each rank keeps
    ``queue_length`` rows of its own images' projections, so all ranks together use
    ``world * queue_length`` (the official code divides its ``queue_length`` by the number of ranks;
    set ``queue_length`` to that per-rank size). A checkpoint holds rank 0's queue, which every rank
    gets back on ``--resume``: until the queues refill, the ranks share rank 0's rows.

    Scores, codes and the softmax run in at least float32, also under autocast (float64 stays
    float64).

    Args:
        in_dim:                  the projections' width ``D`` (injected by the training loop).
        num_prototypes:          ``K`` (SwAV: 3000 on ImageNet; a few hundred for small data sets).
        temperature:             of the softmax over prototypes (SwAV: 0.1).
        sinkhorn_iterations:     Sinkhorn-Knopp iterations (SwAV: 3).
        epsilon:                 entropic regularization of the codes (SwAV: 0.05; lower is sharper).
        freeze_prototypes_steps: steps during which the prototypes are not trained (SwAV: 313).
        queue_length:            projections kept per global view; 0 turns the queue off (SwAV: 3840
                                 with batches of 256, started at epoch 15).
        queue_start_step:        first step at which a full queue is used.
        queue_views:             number of global views the queue is sized for (the recipe must make
                                 exactly this many when the queue is on).

    Returns (from ``forward``): a dict with the scalar ``"loss"`` and detached 0-dim metrics:

        code_entropy:    entropy (nats) of the mean code over the batch and global views; ``log K``
                         when every prototype gets the same share;
        prototypes_used: fraction of the prototypes that are the top assignment of some code;
        queue_used:      (only with a queue) 1 when this step's codes used the queue, else 0.
    """

    main_metric = "code_entropy"  # shown on the console each epoch

    reads = frozenset({"online.projections"})

    def __init__(
        self,
        in_dim: Annotated[int, Range(min=1, hint="the projections' width, set by the training loop")],
        num_prototypes: Annotated[int, Range(min=2, hint="SwAV uses 3000 on ImageNet")] = 3000,
        temperature: Annotated[float, loss_kit.temperature_range("SwAV uses 0.1")] = 0.1,
        sinkhorn_iterations: Annotated[int, Range(min=1, hint="SwAV uses 3")] = 3,
        epsilon: Annotated[float, Range(min=0, exclusive_min=True, hint="SwAV uses 0.05")] = 0.05,
        freeze_prototypes_steps: Annotated[int, Range(min=0, hint="SwAV uses 313; 0 trains them from the start")] = 313,
        queue_length: Annotated[int, Range(min=0, hint="0 turns the queue off; SwAV uses 3840 with batches of 256")] = 0,
        queue_start_step: Annotated[int, Range(min=0)] = 0,
        queue_views: Annotated[int, Range(min=1, hint="the number of global views the recipe makes")] = 2,
    ):
        super().__init__()
        self.in_dim, self.num_prototypes, self.temperature = in_dim, num_prototypes, float(temperature)
        self.sinkhorn_iterations, self.epsilon = sinkhorn_iterations, float(epsilon)
        self.freeze_prototypes_steps, self.queue_length = freeze_prototypes_steps, queue_length
        self.queue_start_step, self.queue_views = queue_start_step, queue_views
        # Initialized like any nn.Linear (torch's global RNG); rows are normalized at each training forward.
        self.prototypes = nn.Linear(self.in_dim, self.num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(self.queue_views, self.queue_length, self.in_dim))
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.long))
        self._queue_fill: int | None = None

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, num_prototypes={self.num_prototypes}, temperature={self.temperature}, "
            f"sinkhorn_iterations={self.sinkhorn_iterations}, epsilon={self.epsilon}, "
            f"freeze_prototypes_steps={self.freeze_prototypes_steps}, queue_length={self.queue_length}, "
            f"queue_start_step={self.queue_start_step}, queue_views={self.queue_views}"
        )

    def _filled(self) -> int:
        """The queue's filled rows, kept in Python (read from the checkpointed buffer once, not every step)."""
        if self._queue_fill is None:
            self._queue_fill = int(self.queue_fill)
        return self._queue_fill

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._queue_fill = None  # a checkpoint's count: read again

    @torch.no_grad()
    def after_step(self) -> None:
        """Unit prototypes again after the optimizer moved them (the step calls this). The forward's in-place
        normalization alone does not reach the stored weights of a sharded run: FSDP2 gathers a temporary copy
        for the forward. Each process holds whole rows (shards split the first dimension), so its rows are
        normalized where they are."""
        weight = self.prototypes.weight
        local = weight.to_local() if hasattr(weight, "to_local") else weight  # a sharded run's DTensor: its rows
        local.copy_(F.normalize(local, dim=1))

    def _check(self, out: Any) -> list[int]:
        views = out.projections
        global_idx = [i for i, g in enumerate(out.is_global) if g]
        if not global_idx:
            raise ComponentError(
                f"{self.component_name} needs at least 1 global view (its codes are the targets); the recipe makes 0. "
                "Add a global view section (a section without `local: true`)."
            )
        if len(views) < 2:
            raise ComponentError(
                f"{self.component_name} needs at least 2 views (the code of one view is predicted from another); "
                f"the recipe makes {len(views)}. Use a global view section with count 2."
            )
        if self.queue_length > 0 and len(global_idx) != self.queue_views:
            raise ComponentError(
                f"{self.component_name}'s queue is sized for queue_views={self.queue_views} global views, but the recipe "
                f"makes {len(global_idx)}; set queue_views: {len(global_idx)} in the loss section"
            )
        loss_kit.batch_of_width(self, "every view's projections", views, self.in_dim)
        return global_idx

    def forward(self, out: Any) -> dict[str, Tensor]:
        global_idx = self._check(out)
        views = out.projections
        n = views[0].shape[0]
        step = int(out.step)
        weight = self.prototypes.weight
        if self.training:
            with torch.no_grad():  # unit prototypes, in place, before every training step (official code)
                weight.copy_(F.normalize(weight, dim=1))
        else:  # evaluation leaves the state alone
            weight = F.normalize(weight, dim=1)
        if step < self.freeze_prototypes_steps:
            weight = weight.detach()  # frozen: no gradient reaches the prototypes
        use_queue = self.queue_length > 0 and step >= self.queue_start_step and self._filled() == self.queue_length

        loss, metrics, z = swav(views, weight, global_idx, self.temperature, self.epsilon, self.sinkhorn_iterations,
                                self.queue if use_queue else None)
        if self.queue_length > 0:
            metrics["queue_used"] = torch.tensor(float(use_queue), dtype=loss.dtype)

        if self.training and self.queue_length > 0:
            with torch.no_grad():
                for slot, i in enumerate(global_idx):
                    fresh = z[i].detach().to(self.queue.dtype)
                    self.queue[slot] = torch.cat([fresh, self.queue[slot]])[: self.queue_length]
                self._queue_fill = min(self._filled() + n, self.queue_length)
                self.queue_fill.fill_(self._queue_fill)
        return {"loss": loss, **metrics}
