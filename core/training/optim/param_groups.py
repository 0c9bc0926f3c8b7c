"""The optimizer's parameter groups: weight decay for weights only, the recipe's ``params:`` rules
(a learning-rate scale, a weight decay, a fixed learning rate, frozen epochs per set of parameters) and
layer-wise learning-rate decay for the backbone.

Each group's extra keys say how the loop treats it: ``lr_factor`` (a rule's lr_scale times the layer's
decay) multiplies the optimizer's lr once, before the scheduler reads its base rates (not under timm's
key ``lr_scale``: timm's schedulers would apply it a second time); ``pinned_lr`` is a rate the scheduler
must not move; ``frozen_steps`` the optimizer steps during which its parameters get no update
(``frozen``: never). Without rules the groups are exactly the
two of earlier releases (weights, then biases and norms without weight decay), so old checkpoints resume.

Which tensors decay: those of more than one dimension (weights, not biases or norm scales) and the learned
tokens that stand for an image patch, whatever their shape: the mask tokens (``...mask_token``), stored 1-D
in cl-run but (1, D) or (1, 1, D) in the official code of every method that has one, which decays them.
Checkpoints written before mask tokens decayed (format 1) group them with the biases; ``format1_groups``
gives that grouping, so their optimizer state is moved to the groups of today (clrun.training.checkpointing).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Optional

from torch import nn

from clrun.errors import UserError
from clrun.recipe.schema import ParamsSection


def named_parameters(network: nn.Module, loss_fn: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters by the names the rules match: ``backbone.``, ``projector.``, ``predictor.``, ``loss.``."""
    named = list(network.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    return [(name, p) for name, p in named if p.requires_grad]


# Parameters decayed whatever their shape (see the module's docstring).
DECAYED_TOKENS = ("mask_token",)


def decays(name: str, parameter: nn.Parameter, decay_all: bool, tokens_decay: bool = True) -> bool:
    """Whether the default rule gives ``name`` weight decay; ``tokens_decay=False``: the rule of format-1
    checkpoints (mask tokens as biases)."""
    return decay_all or parameter.ndim > 1 or (tokens_decay and name.endswith(DECAYED_TOKENS))


def build_groups(named: list[tuple[str, nn.Parameter]], params: ParamsSection, decay_all: bool,
                 layers: Optional[dict[str, float]], steps_per_epoch: int,
                 tokens_decay: bool = True) -> list[dict[str, Any]]:
    """``layers``: each backbone parameter's lr scale from layer-wise decay (None: no decay);
    ``tokens_decay=False``: the groups as format-1 checkpoints saved them (``decays``)."""
    groups: dict[tuple, dict[str, Any]] = {(-1, 1.0, True): {"params": []}}
    if not decay_all:
        groups[(-1, 1.0, False)] = {"params": [], "weight_decay": 0.0}
    for name, parameter in named:
        rule_index, rule = next(((i, r) for i, r in enumerate(params.groups)
                                 if any(fnmatch.fnmatchcase(name, m) for m in r.match)), (-1, None))
        scale = (layers or {}).get(name, 1.0) * (rule.lr_scale if rule else 1.0)
        decayed = decays(name, parameter, decay_all, tokens_decay)
        key = (rule_index, scale, decayed)
        if key not in groups:
            groups[key] = group_settings(rule, scale, decayed, steps_per_epoch)
        groups[key]["params"].append(parameter)
    for index, rule in enumerate(params.groups):
        for pattern in rule.match:
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
                prefixes = sorted({name.split(".")[0] + ".*" for name, _ in named})
                raise UserError(f"params.groups.{index}.match: no trainable parameter matches {pattern!r}; names start "
                                f"with {', '.join(prefixes)}")
    ordered = sorted(groups.items(), key=lambda item: (item[0][0] >= 0, item[0][0], -item[0][1], not item[0][2]))
    return [group for key, group in ordered if group["params"] or key[0] == -1 and key[1] == 1.0]


def format1_groups(named: list[tuple[str, nn.Parameter]], params: ParamsSection, decay_all: bool,
                   layers: Optional[dict[str, float]], steps_per_epoch: int,
                   live: list[dict[str, Any]]) -> Optional[list[list[nn.Parameter]]]:
    """Each group's parameters as a format-1 checkpoint of this recipe holds them (mask tokens with the biases),
    None where that is the grouping of ``live``, the optimizer's groups (no mask token, or every tensor decayed)."""
    old = [group["params"] for group in build_groups(named, params, decay_all, layers, steps_per_epoch, tokens_decay=False)]
    new = [group["params"] for group in live]
    same = len(old) == len(new) and all(
        len(a) == len(b) and all(x is y for x, y in zip(a, b)) for a, b in zip(old, new))
    return None if same else old


def group_settings(rule, scale: float, decays: bool, steps_per_epoch: int) -> dict[str, Any]:
    settings: dict[str, Any] = {"params": []}
    if not decays:
        settings["weight_decay"] = 0.0
    elif rule is not None and rule.weight_decay is not None:
        settings["weight_decay"] = rule.weight_decay
    if scale != 1.0:
        settings["lr_factor"] = scale
    if rule is not None and rule.fixed_lr:
        settings["fixed_lr"] = True
    if rule is not None and rule.frozen_epochs:
        settings["frozen_steps"] = round(rule.frozen_epochs * steps_per_epoch)
    if rule is not None and rule.frozen:
        settings["frozen"] = True
    return settings


def layer_scales(backbone: nn.Module, backbone_name: str, decay: float) -> dict[str, float]:
    """``backbone.<name>`` -> ``decay ** (L + 1 - layer)``, the usual layer-wise decay rule, with the heads
    as layer L + 1 (full rate). The backbone tells its layers with a method ``layer_ids() -> {parameter name:
    layer}`` (0 on the input side); timm backbones get theirs from timm's ``group_matcher``: for a ViT
    the stem (patch embedding, class token, position embedding) is 0 and block k is k + 1, and timm puts
    the final norm with the last block (some recipes give it the full rate)."""
    layer_ids = getattr(backbone, "layer_ids", None)
    if layer_ids is None:
        raise UserError(f"params.layer_decay: the backbone {backbone_name} does not say how its parameters form "
                        f"layers (it has no layer_ids()); remove params.layer_decay, or use a timm model")
    layer_of = layer_ids()
    last = max(layer_of.values())
    return {f"backbone.{name}": decay ** (last + 1 - layer) for name, layer in layer_of.items()}


def scale_learning_rates(optimizer) -> None:
    """Apply each group's ``lr_factor`` to the rate the optimizer gave it, and note the pinned ones;
    before the scheduler is built, so that it takes these as the groups' base rates."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_factor", 1.0)
        if group.pop("fixed_lr", False):
            group["pinned_lr"] = group["lr"]


def freeze_gradients(optimizer, step: int) -> None:
    """No update for a group in its frozen steps: its gradients are dropped, so the optimizer skips its
    parameters entirely (no weight decay, no moment update)."""
    for group in optimizer.param_groups:
        if group.get("frozen") or step < group.get("frozen_steps", 0):
            for parameter in group["params"]:
                parameter.grad = None


class PinnedRates:
    """A scheduler that leaves the groups with a ``pinned_lr`` at that rate."""

    def __init__(self, scheduler: Any, optimizer) -> None:
        self.scheduler, self.optimizer = scheduler, optimizer
        self.pin()

    def pin(self) -> None:
        for group in self.optimizer.param_groups:
            if "pinned_lr" in group:
                group["lr"] = group["pinned_lr"]

    def step(self) -> None:
        self.scheduler.step()
        self.pin()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
        self.pin()


def describe(optimizer, named: list[tuple[str, nn.Parameter]]) -> list[str]:
    """One line per parameter group, for `cl-run check`."""
    names = {id(p): n for n, p in named}
    lines = []
    for i, group in enumerate(optimizer.param_groups):
        members = [names.get(id(p), "?") for p in group["params"]]
        shown = ", ".join(members[:3]) + (f", ... ({len(members)} tensors)" if len(members) > 3 else "")
        extras = [f"lr {group.get('initial_lr', group['lr']):.3g}", f"weight decay {group.get('weight_decay', 0):.3g}"]
        extras += ["lr fixed"] if "pinned_lr" in group else []
        extras += [f"frozen for {group['frozen_steps']} steps"] if group.get("frozen_steps") else []
        extras += ["frozen (never updated)"] if group.get("frozen") else []
        lines.append(f"group {i}: {'; '.join(extras)}: {shown or '(empty)'}")
    return lines
