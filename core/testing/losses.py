"""The contracts of a ``loss`` component, and ``step_outputs`` to call a loss in a test.

A loss is called with the step's ``clrun.StepOutputs``. The standard input here is what a recipe with
two global views, a predictor and a momentum target network produces: ``BATCH`` images, projections,
predictions and target projections of width ``in_dim`` (16 unless the settings give ``in_dim``),
float32, requiring grad where the training loop's would. Each contract builds the loss from its
settings, calls fresh copies of it, and checks one promise the training loop relies on.
"""

from __future__ import annotations

import copy
import io
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from clrun import Branch, Masks, StepOutputs, Tokens, create
from clrun.testing.contract import ContractError, clear_error_or_result, finite, require

BATCH = 8
DIM = 16
FEATURES = 32
PATCHES = 4  # the patch tokens of each global view: a 2 x 2 grid
GRID = (2, 2)
STANDARD_VIEWS = (True, True)

# View layouts a recipe can make besides the standard one; the loss computes or says what it needs.
OTHER_LAYOUTS: dict[str, tuple[bool, ...]] = {
    "one global view": (True,),
    "one global and two local views": (True, False, False),
    "only local views": (False, False),
    "three global views": (True, True, True),
    "two global and two local views": (True, True, False, False),
}


def step_outputs(
    projections: Sequence[Tensor],
    is_global: Sequence[bool] | None = None,
    *,
    predictions: Sequence[Tensor] | None = None,
    target_projections: Sequence[Tensor] | None = None,
    features: Sequence[Tensor] | None = None,
    step: int = 0,
    total_steps: int = 1,
    masks: Sequence[Masks | None] | None = None,
    token_projections: Sequence[Tensor | None] | None = None,
    target_token_projections: Sequence[Tensor] | None = None,
    tokens: Sequence[Tokens | None] | None = None,
    target_tokens: Sequence[Tokens] | None = None,
    token_predictions: Sequence[Tensor | None] | None = None,
    views: Sequence[Tensor] | None = None,
    snapshot_tokens: Sequence[Tokens] | None = None,
) -> StepOutputs:
    """A ``clrun.StepOutputs`` to call a loss with in a test: one projection per view, every view global
    unless ``is_global`` says otherwise, and the backbone features (unused by most losses) defaulting
    to the detached projections. The other outputs are optional: one left out (None) is absent from its
    branch. The keywords are the flat names of ``StepOutputs``; ``branch_outputs`` takes branches."""
    online = Branch(features=[p.detach() for p in projections] if features is None else features,
                    projections=projections, predictions=predictions, tokens=tokens,
                    token_projections=token_projections, token_predictions=token_predictions)
    target = Branch(projections=target_projections, tokens=target_tokens, token_projections=target_token_projections,
                    snapshot_tokens=snapshot_tokens)
    return branch_outputs(online, target, is_global, masks=masks, views=views, step=step, total_steps=total_steps)


def branch_outputs(
    online: Branch,
    target: Branch | None = None,
    is_global: Sequence[bool] | None = None,
    *,
    masks: Sequence[Masks | None] | None = None,
    views: Sequence[Tensor] | None = None,
    step: int = 0,
    total_steps: int = 1,
) -> StepOutputs:
    """A ``clrun.StepOutputs`` from its two branches (``target``: none, an empty branch), every view global
    unless ``is_global`` says otherwise; ``views`` default to none (a loss that reads pixels needs them)."""
    count = len(next(iter(online.items()), ("", []))[1])
    flags = [True] * count if is_global is None else list(is_global)
    return StepOutputs(views=[] if views is None else list(views), is_global=flags,
                       masks=None if masks is None else list(masks), online=online,
                       target=Branch() if target is None else target, step=step, total_steps=total_steps)


def random_outputs(
    dim: int,
    *,
    batch: int = BATCH,
    is_global: Sequence[bool] = STANDARD_VIEWS,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    predictions: bool = True,
    targets: bool = True,
    step: int = 0,
) -> StepOutputs:
    """Random step outputs as the training loop makes them: projections and predictions per view (leaves
    that require grad), target projections per global view (no grad), features per view; and what a
    ``masking:`` section (and a loss that reads the token projections) adds: masks of ``PATCHES`` patches per global view (half
    of them hidden), the head's output per patch token of each global view (grad) and the target's; the
    online tokens of the visible patches (the hidden ones dropped) and the target's tokens of all of them;
    a token head's predictions for the hidden patches (grad); the target snapshot's tokens of every patch; the views, ``dim`` channels of ``2 x 2``
    pixels, one pixel per patch (so a pixel-predicting loss finds ``dim`` values per patch too)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(width: int = dim) -> Tensor:
        return torch.randn(batch, width, generator=generator).to(dtype)

    def patches() -> Tensor:
        return torch.randn(batch, PATCHES, dim, generator=generator).to(dtype)

    def mask() -> Masks:
        visible = torch.rand(batch, PATCHES, generator=generator).argsort(dim=1) < PATCHES // 2
        return Masks(visible, (~visible).unsqueeze(1))

    def tokens(count: int) -> Tokens:
        return Tokens(prefix=draw().unsqueeze(1), patches=torch.randn(batch, count, dim, generator=generator).to(dtype),
                      grid=GRID, pooled=draw())

    hidden = PATCHES - PATCHES // 2
    return step_outputs(
        [draw().requires_grad_() for _ in is_global],
        is_global,
        predictions=[draw().requires_grad_() for _ in is_global] if predictions else None,
        target_projections=[draw() for g in is_global if g] if targets else None,
        features=[draw(FEATURES) for _ in is_global],
        step=step,
        total_steps=100,
        masks=[mask() if g else None for g in is_global],
        token_projections=[patches().requires_grad_() if g else None for g in is_global],
        target_token_projections=[patches() for g in is_global if g] if targets else None,
        tokens=[tokens(PATCHES // 2) if g else None for g in is_global],
        target_tokens=[tokens(PATCHES) for g in is_global if g] if targets else None,
        token_predictions=[torch.randn(batch, 1, hidden, dim, generator=generator).to(dtype).requires_grad_() if g
                           else None for g in is_global],
        views=[torch.randn(batch, dim, *GRID, generator=generator).to(dtype) for _ in is_global],
        snapshot_tokens=[tokens(PATCHES) for g in is_global if g] if targets else None,
    )


def _build(name: str, settings: dict[str, Any]) -> tuple[torch.nn.Module, int]:
    """The loss from its settings, and the projection width it gets (``in_dim``, injected by the loop)."""
    settings = dict(settings)
    dim = settings.pop("in_dim", DIM)
    return create("loss", name, in_dim=dim, **settings), dim


def _split(result: Any) -> tuple[Tensor, dict[str, Any]]:
    """The loss and the metrics of what a loss returned."""
    if isinstance(result, Tensor):
        return result, {}
    require(
        isinstance(result, dict) and isinstance(result.get("loss"), Tensor),
        f"it returned {type(result).__name__}; return a scalar tensor or a dict with 'loss' and scalar metrics",
    )
    return result["loss"], {k: v for k, v in result.items() if k != "loss"}


def _loss_of(loss_fn: torch.nn.Module, out: StepOutputs) -> Tensor:
    """The loss a fresh copy of ``loss_fn`` computes (a copy: stateful losses change their state)."""
    return _split(copy.deepcopy(loss_fn)(out))[0]


def _finite_scalar(loss: Tensor, situation: str) -> None:
    require(loss.ndim == 0, f"{situation}: the loss has shape {tuple(loss.shape)}; return a 0-dim tensor")
    require(finite(loss), f"{situation}: the loss is {loss.item()}")


def _close(a: Tensor, b: Tensor) -> bool:
    return bool(torch.allclose(a.detach().double(), b.detach().double(), rtol=1e-6, atol=1e-7))


def returns_a_loss(kind: str, name: str, **settings: Any) -> None:
    """On the standard input: a finite 0-dim float32 loss that requires grad, metrics under str keys, and
    the ``main_metric`` the loss names for the console (if it names one) among them."""
    loss_fn, dim = _build(name, settings)
    loss, metrics = _split(loss_fn(random_outputs(dim)))
    main = getattr(loss_fn, "main_metric", None)
    require(main is None or main in metrics,
            f"main_metric {main!r} is not among the metrics the loss returns ({sorted(metrics)}); name one of them")
    _finite_scalar(loss, "on two global views of 8 images")
    require(loss.dtype == torch.float32, f"the loss is {loss.dtype} for float32 inputs; compute it in float32")
    require(
        loss.requires_grad,
        "the loss does not require grad, so nothing would train: compute it from out.projections or "
        "out.predictions without detaching them",
    )
    require(all(isinstance(k, str) for k in metrics), f"metric names must be strings, got {list(metrics)}")


def metrics_are_detached(kind: str, name: str, **settings: Any) -> None:
    """Every metric is a finite number or a detached 0-dim tensor: a metric that holds the graph keeps
    the step's activations alive until it is logged."""
    loss_fn, dim = _build(name, settings)
    _, metrics = _split(loss_fn(random_outputs(dim)))
    for key, value in metrics.items():
        if isinstance(value, Tensor):
            require(value.ndim == 0, f"metric {key!r} has shape {tuple(value.shape)}; return a 0-dim tensor")
            require(not value.requires_grad, f"metric {key!r} requires grad; return it with .detach()")
            require(finite(value), f"metric {key!r} is {value.item()} on the standard input")
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            require(number and math.isfinite(value), f"metric {key!r} is {value!r}; return a number or a 0-dim tensor")


def float32_under_autocast(kind: str, name: str, **settings: Any) -> None:
    """Under bf16 autocast, and on bf16 inputs, the loss is float32 and equals the float32 computation:
    mixed precision must not reach the logits (``clrun.loss_kit.autocast_off``, ``compute_dtype``)."""
    loss_fn, dim = _build(name, settings)
    plain = _loss_of(loss_fn, random_outputs(dim))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _loss_of(loss_fn, random_outputs(dim))
    require(under.dtype == torch.float32, f"under bf16 autocast the loss is {under.dtype}; compute it in float32")
    require(
        _close(under, plain),
        f"under bf16 autocast the loss is {under.item()}, without autocast {plain.item()}: part of the math ran "
        "in bf16; run it inside clrun.loss_kit.autocast_off",
    )
    half = _loss_of(loss_fn, random_outputs(dim, dtype=torch.bfloat16))
    rounded = _loss_of(loss_fn, _as_float32(random_outputs(dim, dtype=torch.bfloat16)))
    require(half.dtype == torch.float32, f"on bf16 inputs the loss is {half.dtype}; cast them with clrun.loss_kit.compute_dtype")
    require(
        _close(half, rounded),
        f"on bf16 inputs the loss is {half.item()}, on the same values in float32 {rounded.item()}; "
        "cast the inputs to clrun.loss_kit.compute_dtype(...) before the math",
    )


def _as_float32(out: StepOutputs) -> StepOutputs:
    def cast(tensors: list[Tensor] | None) -> list[Tensor] | None:
        if tensors is None:
            return None
        return [t.detach().float().requires_grad_(t.requires_grad) for t in tensors]

    def cast_some(tensors: list[Tensor | None] | None) -> list[Tensor | None] | None:
        return None if tensors is None else [None if t is None else cast([t])[0] for t in tensors]

    def cast_tokens(tokens: list[Tokens | None] | None) -> list[Tokens | None] | None:
        if tokens is None:
            return None
        return [None if t is None else Tokens(*cast([t.prefix, t.patches]), t.grid, *cast([t.pooled])) for t in tokens]

    return step_outputs(
        cast(out.projections), out.is_global, predictions=cast(out.predictions),
        target_projections=cast(out.target_projections), features=cast(out.features), step=out.step,
        total_steps=out.total_steps, masks=out.masks, token_projections=cast_some(out.token_projections),
        target_token_projections=cast(out.target_token_projections), tokens=cast_tokens(out.tokens),
        target_tokens=cast_tokens(out.target_tokens), token_predictions=cast_some(out.token_predictions),
        views=cast(out.views), snapshot_tokens=cast_tokens(out.target.get("snapshot_tokens")),
    )


def finite_gradients(kind: str, name: str, **settings: Any) -> None:
    """Backward gives finite gradients, some of them non-zero, to the projections or predictions, and
    finite gradients to the loss's own parameters."""
    loss_fn, dim = _build(name, settings)
    out = random_outputs(dim)
    loss, _ = _split(loss_fn(out))
    require(loss.requires_grad, "the loss does not require grad: nothing to differentiate")
    loss.backward()
    outputs = [*out.projections, *out.predictions, *(t for t in out.token_predictions if t is not None)]
    grads = [t.grad for t in outputs if t.grad is not None]
    require(bool(grads), "no projection, prediction or token prediction received a gradient")
    require(all(finite(g) for g in grads), "a projection or prediction received a non-finite gradient")
    require(any(bool(g.abs().sum() > 0) for g in grads), "every gradient is zero: the loss trains nothing")
    for pname, p in loss_fn.named_parameters():
        require(p.grad is None or finite(p.grad), f"the loss's parameter {pname!r} received a non-finite gradient")


def state_in_state_dict(kind: str, name: str, **settings: Any) -> None:
    """All state lives in ``state_dict()`` (buffers, parameters) and survives ``torch.load(weights_only=True)``:
    a copy built from other random draws, loaded with the original's state after a training step,
    computes the same next step. That is what a checkpoint and ``--resume`` do."""
    torch.manual_seed(0)
    original, dim = _build(name, settings)
    torch.manual_seed(1)
    restored, _ = _build(name, settings)
    original(random_outputs(dim, seed=1, step=0))  # a training step: queues fill, prototypes move...
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    nxt = random_outputs(dim, seed=2, step=1)
    expected, got = _as_dict(original(nxt)), _as_dict(restored(nxt))
    for key, value in expected.items():
        same = torch.allclose(torch.as_tensor(got[key]).detach(), torch.as_tensor(value).detach(), rtol=0, atol=0, equal_nan=True)
        require(
            same,
            f"after load_state_dict a copy computes {key}={got[key]} where the original computes {value}: some "
            "state is kept outside state_dict(); hold it in buffers (register_buffer) or parameters",
        )


def _as_dict(result: Any) -> dict[str, Any]:
    loss, metrics = _split(result)
    return {"loss": loss, **metrics}


def view_counts(kind: str, name: str, **settings: Any) -> None:
    """With other view layouts than the standard one the loss computes a finite loss, or raises a
    ``clrun.UserError`` that names the loss and the views the recipe must make."""
    loss_fn, dim = _build(name, settings)
    for situation, layout in OTHER_LAYOUTS.items():
        out = random_outputs(dim, is_global=layout)
        loss = clear_error_or_result(name, lambda: _loss_of(loss_fn, out), "view", f"with {situation}")
        if loss is not None:
            _finite_scalar(loss, f"with {situation}")


def batch_of_one(kind: str, name: str, **settings: Any) -> None:
    """A batch of 1 image (the last batch of an epoch can be that small) gives a finite loss, or a
    ``clrun.UserError`` that names the loss and the batch size."""
    loss_fn, dim = _build(name, settings)
    out = random_outputs(dim, batch=1)
    loss = clear_error_or_result(name, lambda: _loss_of(loss_fn, out), "batch", "with a batch of 1 image")
    if loss is not None:
        _finite_scalar(loss, "with a batch of 1 image")


def missing_predictor_or_target(kind: str, name: str, **settings: Any) -> None:
    """Without a predictor head, or without a target network, the loss computes, or raises a
    ``clrun.UserError`` that names the loss and the recipe section it needs."""
    loss_fn, dim = _build(name, settings)
    for situation, mentions, out in (
        ("without a predictor head (out.predictions is None)", "predictor", random_outputs(dim, predictions=False)),
        ("without a target network (out.target_projections is None)", "target", random_outputs(dim, targets=False)),
    ):
        loss = clear_error_or_result(name, lambda: _loss_of(loss_fn, out), mentions, situation)
        if loss is not None:
            _finite_scalar(loss, situation)


def only_what_it_reads(kind: str, name: str, **settings: Any) -> None:
    """A loss that declares ``reads`` computes a finite loss on the standard input with every output it
    does not declare left out: the build checks a recipe against the declaration only, and the networks
    compute the costly outputs (token projections, the target's tokens) only when they are declared."""
    loss_fn, dim = _build(name, settings)
    reads = getattr(loss_fn, "reads", None)
    if reads is None:
        return
    full = random_outputs(dim)
    kept = branch_outputs(
        Branch(**{n: v for n, v in full.online.items() if f"online.{n}" in reads}),
        Branch(**{n: v for n, v in full.target.items() if f"target.{n}" in reads}),
        full.is_global, masks=full.masks if "masks" in reads else None,
        views=full.views if "views" in reads else None, step=full.step, total_steps=full.total_steps)
    try:
        loss = _loss_of(loss_fn, kept)
    except Exception as exc:
        raise ContractError(f"with only the outputs it reads ({', '.join(sorted(reads))}) it raised "
                            f"{type(exc).__name__}: {exc}; add what it reads besides to its reads") from exc
    _finite_scalar(loss, "with only the outputs it reads")


CONTRACTS: dict[str, Callable[..., None]] = {
    "returns_a_loss": returns_a_loss,
    "metrics_are_detached": metrics_are_detached,
    "float32_under_autocast": float32_under_autocast,
    "finite_gradients": finite_gradients,
    "state_in_state_dict": state_in_state_dict,
    "view_counts": view_counts,
    "batch_of_one": batch_of_one,
    "missing_predictor_or_target": missing_predictor_or_target,
    "only_what_it_reads": only_what_it_reads,
}

__all__ = ["BATCH", "CONTRACTS", "ContractError", "DIM", "branch_outputs", "random_outputs", "step_outputs"]
