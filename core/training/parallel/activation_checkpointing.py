"""``train.activation_checkpointing``: the backbone keeps only each block's input in the forward pass and
recomputes the block's activations in the backward pass, for about a third more compute and the activation
memory of one block instead of all. Through the backbone's own ``set_grad_checkpointing`` (every timm model
has it: a transformer's blocks, a convolutional network's stages), which a token backbone's ``forward_tokens`` honours too.

It needs no change under FSDP: each block is its own sharded unit, and its recomputation goes through its
``forward``, which gathers its weights again."""

from __future__ import annotations

from torch import nn

from clrun.errors import UserError


def checkpoint_activations(backbone: nn.Module, name: str) -> None:
    """Turn on ``backbone``'s activation checkpointing (``name``: its recipe entry, for the error)."""
    enable = getattr(backbone, "set_grad_checkpointing", None)
    if not callable(enable):
        raise UserError(f"train.activation_checkpointing: the backbone {name} has no set_grad_checkpointing method "
                        f"(timm's models have one); set train.activation_checkpointing=false, or give the backbone "
                        f"that method")
    enable(True)
