"""A ceiling for bench/dense_scenes.py: the scene recipe's encoder trained *with labels* for as many steps.

The encoder as training builds it (same seed, same initial weights), a linear layer on its patch tokens,
the logits upsampled bilinearly to the label map and trained with the pixels' cross-entropy (AdamW at the
recipe's peak learning rate, constant; the recipe's batch size; no augmentation), then the recipe's own
dense evaluators on the encoder. If a few hundred steps of supervision barely move the dense scores, a
self-supervised run of that length cannot be expected to: the steps, not the method, are short.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clrun.training.run import Run
from clrun.training.setup import prepare


def built(recipe, device: str) -> Run:
    """The recipe's run on ``device`` as training builds it, before its first step."""
    setup = prepare(recipe, "train", torch.device(device))
    return Run(recipe, setup.parts, setup.device, None, steps_per_epoch=setup.steps_per_epoch)


def evaluate(recipe, run: Run) -> dict[str, float]:
    scores: dict[str, float] = {}
    for spec in recipe.callbacks:
        scores.update(spec.build().evaluate(run))
    return scores


def supervised_scores(recipe, device: str, steps: int, seed: int) -> dict[str, Any]:
    """The recipe's dense evaluators on its encoder after ``steps`` supervised steps on its training scenes."""
    run = built(recipe, device)
    dataset = recipe.data.dataset.build()
    encoder = run.encoder.train()
    with torch.no_grad():
        width = encoder.forward_tokens(run.preprocess(dataset[0][0][None].to(run.device))).patches.shape[-1]
    head = torch.nn.Linear(width, dataset.num_classes).to(run.device)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=recipe.optimizer.params["lr"])
    generator = torch.Generator().manual_seed(seed)
    batch = recipe.data.batch_size
    for _ in range(steps):
        index = torch.randint(0, len(dataset), (batch,), generator=generator)
        images = torch.stack([dataset[int(i)][0] for i in index])
        labels = torch.stack([dataset[int(i)][1] for i in index]).to(run.device)
        tokens = encoder.forward_tokens(run.preprocess(images.to(run.device)))
        rows, columns = tokens.grid
        logits = head(tokens.patches).transpose(1, 2).reshape(batch, -1, rows, columns)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=dataset.ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"supervised_loss": loss.item(), **{f"supervised_{k}": v for k, v in evaluate(recipe, run).items()}}
