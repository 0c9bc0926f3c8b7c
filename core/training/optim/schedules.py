"""The recipe's scheduled scalars (clrun.schedule), bound to what they set: an attribute of a built loss,
projector or predictor, or a setting of the optimizer's parameter groups. Applied before every step
(the value depends on the step alone: a resumed run needs no saved state) and logged with its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from clrun.errors import ComponentError
from clrun.recipe.spec import ComponentSpec
from clrun.schedule import Schedule


@dataclass(frozen=True)
class ScheduledScalar:
    name: str  # its recipe path, e.g. loss.teacher_temperature: also its metric name
    schedule: Schedule
    set: Callable[[float], None]


class ScheduledScalars:
    def __init__(self, steps_per_epoch: int = 1, total_steps: int = 1) -> None:
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.items: list[ScheduledScalar] = []

    def bind_attributes(self, spec: ComponentSpec, module: Any) -> None:
        """Each scheduled setting of ``spec`` sets ``module``'s attribute of the same name: a number, or a
        0-d tensor (a buffer, filled in place). A component that keeps no such attribute cannot follow a
        schedule: an error at that setting."""
        for key, schedule in spec.schedules.items():
            current = getattr(module, key, None)
            if isinstance(current, Tensor) and current.ndim == 0:
                setter = _filler(current)
            elif isinstance(current, (int, float)) and not isinstance(current, bool):
                setter = _attribute_setter(module, key)
            else:
                raise ComponentError(
                    f"{spec.positions[key]}: error: {spec.path}.{key}: {spec.component.kind} {spec.name!r} keeps no "
                    f"number attribute {key!r}, so cl-run cannot change it during the run; give a number, or (its "
                    f"author) store the setting as self.{key}", argument=key)
            self.items.append(ScheduledScalar(f"{spec.path}.{key}", schedule, setter))
        for key, nested in spec.params.items():  # a nested entry's schedules (a loss that wraps a loss)
            if isinstance(nested, ComponentSpec) and _scheduled(nested):
                inner = getattr(module, key, None)
                if inner is None:
                    raise ComponentError(
                        f"{nested.where}: error: {nested.path or key}: {spec.component.kind} {spec.name!r} keeps no "
                        f"attribute {key!r} for its nested {nested.name!r}, so cl-run cannot reach its scheduled "
                        f"settings; give them numbers, or (its author) store it as self.{key}", argument=key)
                self.bind_attributes(nested, inner)

    def bind_optimizer(self, spec: ComponentSpec, optimizer: torch.optim.Optimizer, fixed: list[set[str]],
                       scheduler: ComponentSpec | None) -> None:
        """Each scheduled optimizer setting is set in every parameter group, except the groups that fix
        it themselves (``fixed``: each group's own keys as built; no weight decay for biases and norms
        stays no weight decay)."""
        for key, schedule in spec.schedules.items():
            if key == "lr" and scheduler is not None:
                raise ComponentError(
                    f"{spec.positions[key]}: error: {spec.path}.lr: the learning rate follows the scheduler "
                    f"{scheduler.name!r} ({scheduler.where}); give lr a number, or remove the scheduler", argument=key)
            own = [index for index, keys in enumerate(fixed) if key not in keys]
            self.items.append(ScheduledScalar(f"{spec.path}.{key}", schedule, _group_setter(optimizer, own, key)))

    def apply(self, step: int) -> dict[str, float]:
        """Set every scheduled scalar for the step after ``step`` completed ones; returns the values."""
        values = {}
        for item in self.items:
            value = item.schedule.at(step, self.steps_per_epoch, self.total_steps)
            item.set(value)
            values[item.name] = value
        return values

    def describe(self) -> list[str]:
        last = self.total_steps - 1
        return [f"{item.name}: {item.schedule.describe()}; step 1: {item.schedule.at(0, self.steps_per_epoch, self.total_steps):.6g}, "
                f"step {last + 1}: {item.schedule.at(last, self.steps_per_epoch, self.total_steps):.6g}"
                for item in self.items]


def _scheduled(spec: ComponentSpec) -> bool:
    """Whether ``spec`` or an entry nested in it has a scheduled setting."""
    return bool(spec.schedules) or any(isinstance(v, ComponentSpec) and _scheduled(v) for v in spec.params.values())


def _filler(buffer: Tensor) -> Callable[[float], None]:
    return lambda value: buffer.fill_(value)


def _attribute_setter(module: Any, key: str) -> Callable[[float], None]:
    return lambda value: setattr(module, key, value)


def _group_setter(optimizer: torch.optim.Optimizer, indices: list[int], key: str) -> Callable[[float], None]:
    # By index, looked up each time: loading a checkpoint's optimizer state replaces the group dicts.
    def set_groups(value: float) -> None:
        for index in indices:
            group = optimizer.param_groups[index]
            if key != "lr":
                group[key] = value
            elif "pinned_lr" not in group:  # a learning rate keeps the group's scale (params: rules)
                group[key] = value * group.get("lr_factor", 1.0)
    return set_groups
