"""Resuming restores every piece of training state exactly: the MoCo queue and its pointer, SwAV's
prototypes and queue, DINO's center, the momentum target network and the position of its schedule, the
target's snapshot mid-way between refreshes (Gram anchoring), a scheduled scalar and a frozen parameter
group mid-way.

Two checks per recipe: (1) right after ``--resume`` loads a mid-run checkpoint, every tensor of that
state equals the checkpoint's; (2) a 2-epoch run interrupted after its first epoch and resumed ends
bitwise where an uninterrupted run ends (same data order, augmentations, learning rate and momentum
at every step).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import clrun
from clrun.run_folder import RunFolder
from clrun.training import checkpointing
from clrun.training.checkpointing import Checkpointer

TINY = Path(__file__).parents[1] / "recipes" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("no_report")  # the report is not under test here: skip its plots

# 64 images in batches of 16: 4 steps per epoch. Queues of 40 do not divide by the 32 keys a step adds,
# so by the checkpoint the MoCo queue pointer has wrapped around once.
MOCO = """
target: {momentum: 0.9, final_momentum: 1.0}
"""
MOCO_LOSS = "loss: {name: clrun/moco, queue_size: 40, temperature: 0.2}"
SWAV_LOSS = ("loss: {name: clrun/swav, num_prototypes: 12, queue_length: 32, queue_start_step: 2, "
             "freeze_prototypes_steps: 2}")
BYOL = """
predictor: {name: clrun/mlp, hidden_dim: 32}
target: {momentum: 0.95, final_momentum: 1.0}
"""
BYOL_LOSS = "loss: {name: clrun/byol}"
# DINO mid-schedule: the teacher temperature warms up over 1.5 epochs, the last layer is frozen for 1.5
# (the checkpoint falls in both), the center and the teacher's momentum move every step.
DINO = """
target: {momentum: 0.9, final_momentum: 1.0}
params: {groups: [{match: [projector.last_layer.*], frozen_epochs: 1.5}]}
"""
DINO_LOSS = ("loss: {name: clrun/dino, teacher_temperature: {schedule: linear, start: 0.04, end: 0.07, until_epoch: 1.5}}\n"
             "projector: {name: clrun/dino_head, out_dim: 16, hidden_dim: 32, bottleneck_dim: 8}")

# iBOT with DINOv3's Gram term: the target's snapshot refreshed every 3 steps, so the checkpoint after step 4 falls
# mid-period (the resumed run must refresh at step 6, as the straight one does); a ViT with masked views.
GRAM = """
target: {momentum: 0.9, final_momentum: 1.0, snapshot: {every: 3, scale: 2.0}}
masking: {generator: {name: clrun/block_mask}}
"""
GRAM_LOSS = ("loss: {name: clrun/gram_anchoring, weight: 1.0, loss: {name: clrun/ibot}}\n"
             "projector: {name: clrun/dino_head, out_dim: 16, hidden_dim: 32, bottleneck_dim: 8}")
VIT = "backbone: {name: timm/test_vit, img_size: 32, mask_token: true, model_args: {dynamic_img_size: true}}\n"

CASES = {"moco": (MOCO_LOSS, MOCO), "swav": (SWAV_LOSS, ""), "byol": (BYOL_LOSS, BYOL), "dino": (DINO_LOSS, DINO),
         "gram": (GRAM_LOSS, GRAM)}


def recipe_file(folder: Path, case: str) -> Path:
    loss, extra = CASES[case]
    text = TINY.read_text(encoding="utf-8").replace("loss:\n  name: clrun/ntxent\n  temperature: 0.2\n", loss + "\n")
    if "projector:" in loss:  # the case brings its own head
        text = text.replace("projector:\n  name: clrun/mlp\n  hidden_dim: 64\n  out_dim: 32\n", "")
    if "masking:" in extra:  # masked views: a ViT
        text = text.replace("backbone:\n  name: timm/test_resnet\n", VIT)
    assert loss in text
    path = folder / f"{case}.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def load(path: Path, folder: Path, epochs: int, name: str):
    return clrun.load_recipe(path, [f"train.epochs={epochs}", f"run.dir={folder}", f"run.name={name}"])


def flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out


# The ViT case (Gram anchoring) takes 7 s: in the slow suite, which CI runs.
@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c == "gram" else []) for c in sorted(CASES)])
def test_resume_restores_the_stateful_parts_exactly(case, tmp_path, crash_after_first_checkpoint, build_run):
    path = recipe_file(tmp_path, case)
    interrupted = crash_after_first_checkpoint(load(path, tmp_path, 2, "interrupted"))
    saved_path = RunFolder(interrupted).checkpoint
    saved = checkpointing.load(saved_path)

    # (1) What --resume loads is exactly what was saved, and the stateful pieces are really in it.
    recipe = load(path, tmp_path, 2, "check")
    run = build_run(recipe)  # built as training builds it
    parts = run.parts
    assert run.steps_per_epoch == 4
    Checkpointer(run).restore(saved_path)
    restored = {"loss": parts.loss_fn.state_dict(), "network": parts.network.state_dict()}
    if parts.target is not None:
        restored["target"] = parts.target.state_dict()
    restored_flat, saved_flat = flat(restored), flat({k: saved[k] for k in restored})
    assert restored_flat.keys() == saved_flat.keys()
    for key, value in saved_flat.items():
        assert torch.equal(restored_flat[key], value), key
    assert (run.epoch, run.step) == (1, 4)
    expected = {
        "moco": {"loss.queue", "loss.queue_ptr", "target.momentum", "target.updates"},
        "swav": {"loss.prototypes.weight", "loss.queue"},
        "byol": {"target.momentum", "target.updates", "network.predictor.net.0.weight"},
        "dino": {"loss.center", "target.momentum", "target.updates",
                 "network.projector.last_layer.parametrizations.weight.original1"},
        "gram": {"loss.loss.center", "loss.loss.patch_center", "target.updates", "target.snapshot.cls_token",
                 "target.snapshot.blocks.0.attn.qkv.weight"},
    }[case]
    assert expected <= saved_flat.keys()
    if parts.target is not None:
        assert int(saved["target"]["updates"]) == 4  # one EMA update per step
        assert float(saved["target"]["momentum"]) > recipe.target.momentum  # the schedule moved on

    # (2) Interrupted + resumed == uninterrupted, bit for bit.
    resumed = clrun.train(load(path, tmp_path, 2, "interrupted"), resume=interrupted)
    straight = clrun.train(load(path, tmp_path, 2, "straight"))
    a = flat(checkpointing.load(resumed.folder.checkpoint))
    b = flat(checkpointing.load(straight.folder.checkpoint))
    assert a.keys() == b.keys()
    for key in a:
        if not key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key


def test_resume_with_a_recipe_that_does_not_fit_names_the_part(tmp_path, crash_after_first_checkpoint):
    path = recipe_file(tmp_path, "moco")
    interrupted = crash_after_first_checkpoint(load(path, tmp_path, 2, "interrupted"))
    saved = RunFolder(interrupted).checkpoint
    refit = "resume with the recipe the run was started with (recipe.yaml in its run folder)"

    # Refused as a change of the training (tests/integration/test_resume_changes.py); allowed, it still cannot load.
    bigger_queue = clrun.load_recipe(path, ["loss.queue_size=48", f"run.dir={tmp_path}"])
    with pytest.raises(clrun.UserError, match="loss.queue_size: 40 -> 48"):
        clrun.train(bigger_queue, resume=interrupted)
    with pytest.raises(clrun.UserError) as info:
        clrun.train(bigger_queue, resume=interrupted, allow_changes=True)
    message = str(info.value)
    assert message.startswith(f"--resume: {saved}: its loss state does not fit this recipe (")
    assert "size mismatch for queue" in message and message.endswith(refit)

    # MoCo reads the target's projections: without a target, a loss that needs none (its state is checked later).
    no_target = clrun.load_recipe(path, ["target=null", "loss={name: clrun/ntxent}", f"run.dir={tmp_path}"])
    with pytest.raises(clrun.UserError) as info:
        clrun.train(no_target, resume=interrupted, allow_changes=True)
    assert str(info.value) == (f"--resume: {saved}: the checkpoint has a target network but the recipe has no "
                               f"`target:` section; {refit}")
