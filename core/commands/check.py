"""``cl-run check``: build a recipe on the CPU and push one tiny batch through, writing nothing."""

from __future__ import annotations

import torch

from clrun.errors import DataNotFoundError
from clrun.host_syncs import HostSyncCounter
from clrun.recipe import Recipe
from clrun.streams import images_in
from clrun.training.optim import param_groups
from clrun.training.model.build_errors import BuildErrors
from clrun.training.optim.param_groups import named_parameters
from clrun.training.model.reads import declared
from clrun.training.callbacks.hooks import run_hooks
from clrun.training.callbacks.recipe_callbacks import NamedCallback
from clrun.training.run import Run
from clrun.training.device_settings import describe_device_settings
from clrun.training.parallel.compiling import compile_network, compile_report
from clrun.training.setup import prepare
from clrun.training.step import Step


def check(recipe: Recipe, verbose: bool = False) -> list[str]:
    """Validate-and-build smoke test; returns report lines. Raises on any failure, naming every
    component entry that cannot be built (the callbacks' too) at once. ``verbose``: also a second step,
    its host synchronisations counted by call site (clrun.host_syncs), and the device settings."""
    errors = BuildErrors()
    setup = errors.attempt(lambda: prepare(recipe, "check"), None)
    callback_lines, built = [], []
    for spec in recipe.callbacks:
        try:
            callback = errors.build(spec)
        except DataNotFoundError as exc:  # e.g. an evaluation set that lives on the training machine only
            callback_lines.append(f"callback: {spec.name}: its data is not available here ({exc})")
            continue
        if callback is not None:
            built.append(NamedCallback(callback, spec))
            callback_lines.append(f"callback: {spec.name} built")
    errors.raise_any()
    parts, images, device = setup.parts, setup.example, setup.device
    if setup.dataset is None:
        lines = [f"data: {setup.data_note}"]
    else:
        lines = [f"data: {recipe.data.dataset.name} with {images_in(setup.dataset)} images of shape {tuple(images.shape[1:])}"]
    lines += callback_lines
    run_hooks(built)  # the hook names and arguments of each callback, as training registers them
    view_shapes = [tuple(v.shape[1:]) for v in parts.views(images, setup.example_places)]
    lines.append(f"views: {len(view_shapes)} -> {', '.join('x'.join(map(str, s)) for s in view_shapes)}")
    n_params = sum(p.numel() for p in parts.network.backbone.parameters())
    lines.append(f"backbone: {recipe.backbone.name} ({n_params / 1e6:.2f}M parameters)")
    heads = [recipe.projector.name] + ([recipe.predictor.name] if recipe.predictor is not None else [])
    lines.append(f"heads: {' -> '.join(heads)}")
    if parts.init is not None:  # what init: loads where (a Hub download not cached: on random weights here)
        lines += [f"init: {line}" for line in parts.init.lines()]
    reads = declared(parts.loss_fn)  # checked against the recipe by the build (clrun.training.model.reads)
    lines.append(f"loss: {recipe.loss.name} reads " + (", ".join(sorted(reads)) if reads is not None else
                                                       "every output (it declares no reads)"))
    if recipe.target is not None:
        t = recipe.target
        lines.append(f"target: momentum copy of backbone + projector, {t.momentum} -> {t.final_momentum} ({t.schedule})")
        if (snap := t.snapshot) is not None:
            refresh = (f"refreshed every {snap.every} steps" + (f" from step {snap.after}" if snap.after else "")
                       + (f", {snap.max_refreshes} times at most" if snap.max_refreshes else "")) if snap.every else "never refreshed"
            lines.append(f"target: snapshot of its backbone as the run starts, {refresh}; on views x{snap.scale}")
    if recipe.masking is not None:
        hidden = "dropped" if parts.masking.drop else "replaced by the backbone's mask token"
        grids = sorted({parts.network.backbone.token_grid(*s[-2:]) for s, g in zip(view_shapes, parts.views.is_global) if g})
        lines.append(f"masking: {recipe.masking.generator.name} on the global views' "
                     f"{', '.join(f'{r}x{c}' for r, c in grids)} patch grids; hidden patches {hidden}"
                     + (f"; token head {recipe.masking.head.name}" if recipe.masking.head is not None else ""))
    lines += [f"schedule: {line}" for line in parts.schedules.describe()]
    if recipe.params.groups or recipe.params.layer_decay is not None:
        named = named_parameters(parts.network, parts.loss_fn)
        lines += [f"params: {line}" for line in param_groups.describe(parts.optimizer, named)]
    h = recipe.health
    if h.enabled:
        a = h.alarm
        lines.append(f"health: every {h.every} epoch(s) on {h.samples} images; collapse alarm {a.action} "
                     f"(patience {a.patience}, {a.branch}); loss alarm: max {a.max_loss}, growth "
                     f"{a.max_loss_growth}x, min change {a.min_loss_change}")
    else:
        lines.append("health: off")
    run = Run(recipe, parts, device, None, setup.steps_per_epoch)  # writes nothing; its first step
    # fp32 without loss scaling: the CPU check verifies the wiring; reduced precision is a device matter.
    step = Step(run, "fp32", torch.amp.GradScaler("cpu", enabled=False), recipe.train.grad_clip,
                grad_clip_mode=recipe.train.grad_clip_mode)
    record, _ = step(images, setup.example_places)
    loss = record.values[0].item()
    lines.append(f"step: {recipe.loss.name} loss {loss:.4f} on a batch of {images.shape[0]}; "
                 f"{recipe.optimizer.name} stepped")
    if verbose:
        lines += host_sync_lines(step, run, images, setup.example_places)
        if recipe.train.compile:
            lines += compiled_step_lines(step, run, images, setup.example_places)
        lines.append(describe_device_settings(recipe.train, torch.device("cuda")) + " (on CUDA)")
    return lines


def compiled_step_lines(step: Step, run: Run, images: torch.Tensor, places: torch.Tensor | None) -> list[str]:
    """Two more steps with the network compiled by regions as training compiles it, traced by dynamo alone
    (the "eager" backend: no kernels generated, seconds on a CPU): its graph breaks and graphs by unit."""
    parts = run.parts
    target = parts.target
    units = compile_network([parts.network.backbone, parts.network.projector, parts.network.predictor,
                             parts.network.token_head, *((target.backbone, target.projector) if target is not None else ())],
                            backend="eager")
    for _ in range(2):
        run.step += 1
        step(images, places)
    return [f"compile: {units} units compiled by regions (dynamic=False)", *compile_report()]


def host_sync_lines(step: Step, run: Run, images: torch.Tensor, places: torch.Tensor | None) -> list[str]:
    """A second step (the first made the lazy state) with its host synchronisations counted by call site:
    what would make a GPU wait for the host in every training step, augmentations and loss included. The
    loop's own read of the metrics (every train.log_every steps) is not part of the step."""
    run.step += 1
    with HostSyncCounter() as counter:
        images = images.to(run.device)  # on the device before counting: the loader's pinned batch is uploaded async
        counter.counting = True
        step(images, places)
    lines = [f"host syncs per step: {sum(counter.counts.values())}"]
    lines += [f"host sync: {count} x {site}" for site, count in counter.counts.most_common()]
    return lines
