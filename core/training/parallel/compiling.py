"""``train.compile``: torch.compile by regions, each repeated unit of a network compiled in place on its own.

Compiling the backbone's ``forward`` alone left out what does not go through it: a token method's masked
forward (``forward_tokens``), the target network's copy and the heads. Compiling each repeated unit instead
(a transformer's blocks, a convolutional network's residual blocks; torchtitan's "per block" choice) covers every path that
runs the units, compiles one block's code once for all its copies (torch inlines nn.Modules, so identical
blocks share their graphs) and keeps compile times short. ``dynamic=False``: the views' shapes are fixed
(one graph per view size, e.g. 224 and 96 px), and static shapes give the fastest kernels.

In place (``nn.Module.compile``): state_dict keys stay those of the plain modules.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import torch
from torch import nn


CONTAINERS = (nn.Sequential, nn.ModuleList)


def repeated_units(module: nn.Module) -> list[nn.Module]:
    """The blocks in ``module``'s containers: a container (Sequential, ModuleList) whose children are all of one
    class, each made of modules of its own (a ViT's ``blocks``, each stage of a convolutional network, however short), found
    outermost first; a block's own insides are left to it. A head's layer list (Linear, norm, activation)
    mixes classes and holds no block."""
    units: list[nn.Module] = []
    inside: set[int] = set()
    for child in module.modules():
        if id(child) in inside or not isinstance(child, CONTAINERS):
            continue
        members = list(child.children())
        if members and len({type(m) for m in members}) == 1 and not isinstance(members[0], CONTAINERS) \
                and any(True for _ in members[0].children()):
            units += members
            inside.update(id(m) for unit in members for m in unit.modules())
    return units


def compile_regions(module: nn.Module | None, **options) -> int:
    """Compile ``module``'s repeated units in place (``module`` whole when it has none); how many were compiled."""
    if module is None:
        return 0
    units = repeated_units(module) or [module]
    for unit in units:
        unit.compile(dynamic=False, **options)
    return len(units)


def compile_network(modules: Iterable[nn.Module | None], **options) -> int:
    """Compile every network part by regions: the online backbone and heads, the target's copies."""
    return sum(compile_regions(m, **options) for m in modules)


def compile_report() -> list[str]:
    """What torch.compile did so far in this process: graphs compiled and graph breaks by reason (for
    ``cl-run check -v``). Every graph beyond one per unit and input shape is a recompile worth looking at."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"].get("unique_graphs", 0)
    breaks = Counter({reason.splitlines()[0]: n for reason, n in counters["unimplemented"].items()})
    lines = [f"compile: {graphs} graphs, {sum(breaks.values())} graph breaks"]
    lines += [f"graph break: {n} x {reason}" for reason, n in breaks.most_common()]
    return lines
