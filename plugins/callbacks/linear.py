"""Training a linear classifier on fixed features: the head-training logic of ``clrun/linear_probe``,
shared with the other evaluators that need a head (``clrun/finetune``).

Everything here is deterministic for a given ``seed`` and never draws from torch's global random
generator: a training run that evaluates in the middle keeps its own random streams.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed per-feature ``mean`` and ``std`` (buffers, not trained)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-6) -> "Standardize":
        """The standardization of ``x`` (N, D): its per-feature mean and standard deviation; a constant
        feature gets std ``eps`` (it maps to 0, not NaN). ``x`` may be half precision: it is read in chunks
        (``moments``), never upcast whole."""
        mean, var = moments(x)
        return cls(mean, var.sqrt().clamp_min(eps))


@torch.no_grad()
def moments(x: Tensor, chunk_values: int = 2**24) -> tuple[Tensor, Tensor]:
    """Per-feature mean and (biased) variance of ``x`` (N, D), in fp32, from chunks of about ``chunk_values``
    values (128 MB in fp64) accumulated in fp64, in two passes (the mean, then the squared deviations from
    it): a half-precision bank is never copied into fp32 whole, and a million rows lose no precision."""
    n, chunk = max(len(x), 1), max(1, chunk_values // max(x.shape[1], 1))
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, len(x), chunk):
        total += x[start:start + chunk].double().sum(dim=0)
    mean = total / n
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        squares += (x[start:start + chunk].double() - mean).square().sum(dim=0)
    return mean.float(), (squares / n).float()


@torch.no_grad()
def standardize(train_x: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """``train_x`` and ``others`` shifted and scaled with the mean and standard deviation of ``train_x``
    (per feature): the features' scale differs from run to run (and between backbone and projector),
    while the classifier's learning rate and weight decay should not have to (Kornblith et al. 2019,
    "Do Better ImageNet Models Transfer Better?", standardize features before logistic regression)."""
    scale = Standardize.fit(train_x)
    return tuple(scale(x) for x in (train_x, *others))


def init_linear(in_dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear(in_dim, num_classes)`` initialized like PyTorch's default (uniform in +-1/sqrt(in_dim))
    but drawn from ``generator``: building it never touches the global random generator."""
    linear = nn.utils.skip_init(nn.Linear, in_dim, num_classes)
    bound = 1 / math.sqrt(in_dim)
    with torch.no_grad():
        linear.weight.copy_(torch.rand(linear.weight.shape, generator=generator) * 2 * bound - bound)
        linear.bias.copy_(torch.rand(linear.bias.shape, generator=generator) * 2 * bound - bound)
    return linear


def cosine_factor(step: int, total_steps: int) -> float:
    """Learning-rate factor of a cosine schedule from 1 (step 0) to 0 (step ``total_steps``)."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


@torch.enable_grad()  # also when called under no_grad
def train_linear_classifier(
    train_x: Tensor,
    train_y: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    seed: int = 0,
    device: torch.device | str | None = None,
    inputs: nn.Module | None = None,
) -> nn.Linear:
    """A softmax (multinomial logistic regression) classifier fitted to ``train_x`` (N, D), ``train_y`` (N,).

    AdamW over mini-batches of ``batch_size`` features (reshuffled every epoch), ``epochs`` passes over the
    data, learning rate annealed from ``lr`` to 0 by a cosine schedule. The weights start at zero (the loss
    is convex: the result depends on the data, not on random initial weights) and the batches are shuffled
    by a generator seeded with ``seed``: the same inputs give the same classifier, and torch's global
    random generator is never used. Standardize the features first: ``inputs``, a module applied to each
    mini-batch before the classifier (``Standardize.fit(train_x)``), or ``standardize`` beforehand.
    ``device``: where to train (default: where ``train_x`` is); the classifier is returned there.

    ``train_x`` may be half precision (bf16 features of an accelerator run): it goes to ``device`` as it is
    and each mini-batch is upcast to fp32 there, so no fp32 copy of the features is made.
    """
    if train_x.ndim != 2 or train_y.ndim != 1 or len(train_x) != len(train_y):
        raise ValueError(f"need features (N, D) and labels (N,); got shapes {tuple(train_x.shape)} and "
                         f"{tuple(train_y.shape)}")
    if len(train_y) == 0:
        raise ValueError("cannot train a classifier on an empty data set")
    device = torch.device(device) if device is not None else train_x.device
    generator = torch.Generator().manual_seed(seed)
    model = nn.utils.skip_init(nn.Linear, train_x.shape[1], num_classes, device=device)  # no global draw
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    x, y = train_x.to(device), train_y.long().to(device)  # x in its own dtype: mini-batches are upcast
    inputs = (inputs if inputs is not None else nn.Identity()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(y)
    batches = math.ceil(n / batch_size)
    total_steps = epochs * batches
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for b in range(batches):
            index = order[b * batch_size:(b + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * cosine_factor(step, total_steps)
            loss = F.cross_entropy(model(inputs(x[index].float())), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Class predictions (argmax of the logits) of ``model`` for ``x``, on the CPU; ``x`` is upcast to fp32
    a batch at a time, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size].to(device).float()).argmax(dim=1).cpu()
                          for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy of ``model`` on features ``x`` with labels ``y`` (0.0 for an empty set)."""
    if len(y) == 0:
        return 0.0
    return (predict(model, x, batch_size) == y.cpu()).float().mean().item()
