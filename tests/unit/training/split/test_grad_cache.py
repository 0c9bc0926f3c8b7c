"""Gradient caching (``train.grad_cache_chunks``): the whole batch's loss and gradients, the network run in chunks."""

from __future__ import annotations

from pathlib import Path

import torch
import pytest

import clrun
from clrun.training.model.branch import Branch
from clrun.training.model.outputs import StepOutputs
from clrun.training.step import Step
from tests.conftest import built_run
from tests.unit.training.split.recipes import vit_recipe

TINY = Path(__file__).parents[3] / "recipes" / "tiny.yaml"
BATCH, CHUNKS = 256, 8  # chunks of 32
IMAGES = torch.randint(0, 256, (BATCH, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def gradients(run, images=IMAGES, seed: int = 5):
    """``run``'s first step's loss, metrics and gradients on ``images``, its views drawn from ``seed``."""
    torch.manual_seed(seed)
    loss, extras, _ = Step.of(run).gradients(images)
    grads = {n: p.grad.clone() for n, p in run.parts.trainable.named_parameters() if p.grad is not None}
    return float(loss), {k: float(v) for k, v in extras.items()}, grads


def assert_same_gradients(got: dict, expected: dict) -> None:
    """Equal to float tolerance, relative to the largest gradient: a gradient that is zero in exact arithmetic
    (a bias before a loss that centres its inputs) is rounding noise in both."""
    assert got.keys() == expected.keys()
    scale = max(g.abs().max() for g in expected.values())
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-5 * float(scale), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("loss", ["clrun/ntxent", "clrun/barlow_twins", "clrun/vicreg", "clrun/dino", "clrun/ibot"])
def test_a_batch_in_cached_chunks_has_the_loss_and_gradients_of_the_whole_batch(tmp_path, loss):
    whole_run = built_run(vit_recipe(tmp_path, loss))
    cached_run = built_run(vit_recipe(tmp_path, loss, train=f", grad_cache_chunks: {CHUNKS}"))
    whole_loss, whole_metrics, whole = gradients(whole_run)
    cached_loss, cached_metrics, cached = gradients(cached_run)
    assert cached_loss == pytest.approx(whole_loss, rel=1e-5)
    assert cached_metrics == pytest.approx(whole_metrics, rel=1e-4, abs=1e-6)
    assert_same_gradients(cached, whole)
    # The loss ran once, on the whole batch: its state (DINO's and iBOT's centres) moved as without chunks.
    for (name, a), b in zip(whole_run.parts.loss_fn.named_buffers(), cached_run.parts.loss_fn.buffers()):
        torch.testing.assert_close(b, a, msg=lambda m: f"{name}: {m}")


def per_chunk_reference(run, chunks: int, images=IMAGES, seed: int = 5):
    """What gradient caching must compute, written out: each chunk through the network with its graph (its
    own BatchNorm batch, its own draws of drop-path), the loss on the concatenated outputs, one backward."""
    torch.manual_seed(seed)
    parts = run.parts
    views = parts.views(images)
    size = len(images) // chunks
    pieces = [parts.network([v[k * size:(k + 1) * size] for v in views]) for k in range(chunks)]
    online = Branch(**{name: [torch.cat([p.get(name)[i] for p in pieces]) for i in range(len(views))]
                       for name in ("features", "projections")})
    out = StepOutputs(views, parts.views.is_global, None, online, Branch(), 0, parts.total_steps)
    loss = parts.loss_fn(out)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in parts.trainable.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def test_with_batchnorm_each_chunk_is_its_own_batch_and_the_running_statistics_move_once_per_chunk():
    recipe = clrun.load_recipe(TINY, ["train.grad_cache_chunks=4"])  # SimCLR on timm's test_resnet: BatchNorm
    cached_run, reference_run = built_run(recipe), built_run(recipe)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    cached_loss, _, cached = gradients(cached_run, images)
    reference_loss, reference = per_chunk_reference(reference_run, 4, images)
    assert cached_loss == pytest.approx(reference_loss, rel=1e-5)
    assert_same_gradients(cached, reference)
    # The replay recomputes each chunk in train mode, but the statistics are those of one pass over the chunks.
    for (name, a), b in zip(reference_run.parts.network.named_buffers(), cached_run.parts.network.buffers()):
        torch.testing.assert_close(b, a, msg=lambda m: f"{name}: {m}")


def test_each_chunk_is_replayed_with_its_own_random_draws(tmp_path):
    """With drop-path, the chunk run again with its graph drops the blocks its first run dropped: the
    gradients are those of one pass with the graph, chunk after chunk."""
    recipe = vit_recipe(tmp_path, "clrun/ntxent", train=", grad_cache_chunks: 4", backbone_args="  drop_path_rate: 0.5")
    cached_run, reference_run = built_run(recipe), built_run(recipe)
    cached_loss, _, cached = gradients(cached_run)
    reference_loss, reference = per_chunk_reference(reference_run, 4)
    assert cached_loss == pytest.approx(reference_loss, rel=1e-5)
    assert_same_gradients(cached, reference)
    # And the draws matter: another seed for the same views' drop-path gives other gradients.
    torch.manual_seed(5)
    views = reference_run.parts.views(IMAGES)
    torch.manual_seed(99)
    other = reference_run.parts.network([v[:64] for v in views]).projections[0]
    torch.manual_seed(5)
    views = reference_run.parts.views(IMAGES)
    same = reference_run.parts.network([v[:64] for v in views]).projections[0]
    assert not torch.allclose(other, same)
