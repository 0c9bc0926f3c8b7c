"""``train.activation_checkpointing``: the same gradients, each block's activations recomputed in the backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import clrun
from clrun.training.parallel.activation_checkpointing import checkpoint_activations
from tests.conftest import built_run
from tests.unit.training.split.recipes import vit_recipe
from tests.unit.training.split.test_grad_cache import assert_same_gradients, gradients


@pytest.mark.parametrize("loss", ["clrun/ntxent", "clrun/ibot"])  # the backbone's forward, and forward_tokens
def test_checkpointed_blocks_give_the_same_gradients_and_run_again_in_the_backward_pass(tmp_path, loss):
    plain_run = built_run(vit_recipe(tmp_path, loss))
    checkpointed_run = built_run(vit_recipe(tmp_path, loss, train=", activation_checkpointing: true"))
    first_block = checkpointed_run.parts.network.backbone.blocks[0]
    calls = []
    # A pre-hook: the recomputation stops as soon as it has what the backward needs, before the block returns.
    first_block.register_forward_pre_hook(lambda *_: calls.append(len(calls)))
    plain_loss, _, plain = gradients(plain_run)
    checkpointed_loss, _, checkpointed = gradients(checkpointed_run)
    assert checkpointed_loss == pytest.approx(plain_loss, rel=1e-6)
    assert_same_gradients(checkpointed, plain)
    # Each call of the online backbone ran the block twice: forward, then again in the backward pass.
    backbone_calls = 1 if loss == "clrun/ntxent" else 2  # iBOT: the global views (masked), then the local ones
    assert len(calls) == 2 * backbone_calls
    if checkpointed_run.parts.target is not None:  # the target takes no backward: nothing to recompute
        assert not checkpointed_run.parts.target.backbone.grad_checkpointing


def test_a_backbone_without_set_grad_checkpointing_is_refused_with_the_key():
    with pytest.raises(clrun.UserError) as caught:
        checkpoint_activations(nn.Linear(2, 2), "my/backbone")
    assert str(caught.value) == (
        "train.activation_checkpointing: the backbone my/backbone has no set_grad_checkpointing method (timm's "
        "models have one); set train.activation_checkpointing=false, or give the backbone that method")
