"""A one-file checkpoint's optimizer state, saved under an older grouping of the parameters, moved to the
groups the recipe builds today.

``torch.optim.Optimizer.load_state_dict`` pairs saved and live parameters by their position in each group: had a
parameter moved to another group (format 2 weight-decays the mask tokens, which format 1 kept with the biases),
the load would fail on a group's size or, worse, give a parameter its neighbour's moments. ``regroup`` rewrites
the saved groups' parameter indices so that each live parameter reads its own saved state; the groups' settings
(learning rate, weight decay) stay those saved at the same place. A sharded checkpoint needs none of this: DCP
keys the optimizer's state by parameter name.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from clrun.errors import UserError


def regroup(saved: dict[str, Any], saved_groups: list[list[nn.Parameter]], live_groups: list[dict[str, Any]],
            source: str, fix: str) -> dict[str, Any]:
    """``saved`` (an optimizer's ``state_dict()``) with each live group listing the saved indices of its own
    parameters. ``saved_groups``: the live parameters, grouped as when ``saved`` was written."""
    saved_sizes = [len(group["params"]) for group in saved["param_groups"]]
    if saved_sizes != [len(group) for group in saved_groups] or len(saved_groups) != len(live_groups):
        raise UserError(f"--resume: {source}: its optimizer state has groups of {saved_sizes} tensors, which fit "
                        f"neither this recipe's optimizer nor its format-1 grouping; {fix}")
    index = {id(parameter): saved_index for group, parameters in zip(saved["param_groups"], saved_groups)
             for saved_index, parameter in zip(group["params"], parameters)}
    groups = [{**group, "params": [index[id(p)] for p in live["params"]]}
              for group, live in zip(saved["param_groups"], live_groups)]
    return {**saved, "param_groups": groups}
