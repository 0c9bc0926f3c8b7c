"""``regroup``: an optimizer state saved under one grouping of the parameters, loaded under another, gives each
parameter its own moments (torch's ``load_state_dict`` pairs them by position in each group)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clrun.errors import UserError
from clrun.training.checkpointing.regroup import regroup


def stepped(groups: list[list[nn.Parameter]]) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW([{"params": g, "weight_decay": wd} for g, wd in zip(groups, (0.1, 0.0))], lr=0.1)
    for _ in range(2):
        for group in groups:
            for p in group:
                p.grad = torch.randn_like(p)
        optimizer.step()
    return optimizer


def test_each_parameter_gets_its_own_saved_moments():
    torch.manual_seed(0)
    weight, bias, token, scale = (nn.Parameter(torch.randn(*s)) for s in ((3, 2), (3,), (2,), (3,)))
    old_groups = [[weight], [bias, token, scale]]
    saved = stepped(old_groups).state_dict()
    moments = {id(p): saved["state"][i]["exp_avg"].clone()
               for group, p_list in zip(saved["param_groups"], old_groups) for i, p in zip(group["params"], p_list)}
    live = torch.optim.AdamW([{"params": [weight, token], "weight_decay": 0.1},
                              {"params": [bias, scale], "weight_decay": 0.0}], lr=0.1)
    with pytest.raises(ValueError, match="doesn't match the size"):  # what the plain load does
        live.load_state_dict(saved)
    live.load_state_dict(regroup(saved, old_groups, live.param_groups, "ckpt.pt", "resume with its recipe"))
    for p in (weight, bias, token, scale):
        assert torch.equal(live.state[p]["exp_avg"], moments[id(p)])
    assert [g["weight_decay"] for g in live.param_groups] == [0.1, 0.0]


def test_a_state_that_fits_neither_grouping_is_refused_with_the_file():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, 2))
    saved = stepped([[b], [a]]).state_dict()
    live = torch.optim.AdamW([{"params": [a, b]}], lr=0.1)
    with pytest.raises(UserError) as error:
        regroup(saved, [[a, b]], live.param_groups, "runs/r/checkpoint.pt", "resume with its recipe")
    assert str(error.value) == ("--resume: runs/r/checkpoint.pt: its optimizer state has groups of [1, 1] tensors, "
                                "which fit neither this recipe's optimizer nor its format-1 grouping; resume with its "
                                "recipe")
