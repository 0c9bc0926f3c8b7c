"""FSDP2's mixed precision (``train.fsdp_param_dtype``, ``train.fsdp_reduce_dtype``): where
``MixedPrecisionPolicy`` is found (both of FSDP2's places, faked as in test_compat.py), the policy each kind of
unit gets, and that fp32 for both keys passes none. That a bf16 run computes in bf16 is checked with two
processes (tests/distributed/test_matrix.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
import torch
import torch.distributed.device_mesh
from torch import nn

import clrun
from clrun.errors import UserError
from clrun.training.parallel import compat, sharding
from tests.unit.training.parallel.test_compat import fake_module


@dataclass(frozen=True)
class FakePolicy:
    param_dtype: object = None
    reduce_dtype: object = None
    output_dtype: object = None
    cast_forward_inputs: bool = True


def test_policy_from_the_public_path():
    from torch.distributed.fsdp import MixedPrecisionPolicy

    assert compat.fsdp_mixed_precision_policy() is MixedPrecisionPolicy


def test_policy_from_the_first_place_when_the_public_path_lacks_it(monkeypatch):
    """torch 2.4 and 2.5: FSDP2, its policy included, in torch.distributed._composable.fsdp only."""
    fake_module(monkeypatch, compat.FSDP_PUBLIC)  # FSDP1 only
    fake_module(monkeypatch, compat.FSDP_PROTOTYPE, MixedPrecisionPolicy=FakePolicy)
    assert compat.fsdp_mixed_precision_policy() is FakePolicy


def test_torch_without_the_policy_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.3.1")
    fake_module(monkeypatch, compat.FSDP_PUBLIC)
    monkeypatch.setitem(sys.modules, compat.FSDP_PROTOTYPE, None)  # importing it fails
    with pytest.raises(UserError) as raised:
        compat.fsdp_mixed_precision_policy()
    assert str(raised.value) == (
        "train.fsdp_param_dtype and train.fsdp_reduce_dtype need FSDP2's MixedPrecisionPolicy (torch >= 2.4's "
        "torch.distributed._composable.fsdp or >= 2.6's torch.distributed.fsdp); this is torch 2.3.1: upgrade torch "
        "or set both to fp32")


def recipe(param: str, reduce: str):
    from pathlib import Path

    quickstart = Path(__file__).resolve().parents[4] / "recipes" / "quickstart.yaml"
    return clrun.load_recipe(quickstart, [f"train.fsdp_param_dtype={param}", f"train.fsdp_reduce_dtype={reduce}",
                                          "callbacks=[]"])


def test_fp32_for_both_keys_is_no_policy():
    assert sharding.precision(recipe("fp32", "fp32")) is None
    assert sharding.policies(None) == {"block": {}, "root": {}, "batch_norm": {}}


@pytest.mark.parametrize("param, reduce", [("bf16", "fp32"), ("fp16", "fp32"), ("bf16", "bf16"), ("fp32", "bf16")])
def test_precision_reads_both_keys(param, reduce):
    assert sharding.precision(recipe(param, reduce)) == sharding.Precision(sharding.DTYPES[param], sharding.DTYPES[reduce])


def test_policies_bf16_parameters_fp32_reductions():
    from torch.distributed.fsdp import MixedPrecisionPolicy

    kinds = sharding.policies(sharding.Precision(torch.bfloat16, torch.float32))
    assert kinds["block"] == {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}
    # A part's outputs go back to fp32, for the loss.
    assert kinds["root"] == {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                               output_dtype=torch.float32)}
    # BatchNorm: fp32 weights, the bf16 activations as they come.
    assert kinds["batch_norm"] == {"mp_policy": MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)}


def test_policies_fp32_parameters_bf16_reductions_leave_the_compute_alone():
    kinds = sharding.policies(sharding.Precision(torch.float32, torch.bfloat16))
    policy = kinds["root"]["mp_policy"]
    assert policy.param_dtype is None and policy.reduce_dtype == torch.bfloat16 and policy.output_dtype is None


class Part(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])


def sharded_units(monkeypatch, mixed) -> list[tuple[str, dict]]:
    """What ``shard`` hands fully_shard for one part, through FSDP2's first place (faked) and a fake mesh."""
    calls: list[tuple[nn.Module, dict]] = []
    fake_module(monkeypatch, compat.FSDP_PUBLIC)
    fake_module(monkeypatch, compat.FSDP_PROTOTYPE, fully_shard=lambda module, **kw: calls.append((module, kw)),
                FSDPModule=type("FSDPModule", (), {}), register_fsdp_forward_method=lambda module, name: None,
                MixedPrecisionPolicy=FakePolicy)
    monkeypatch.setattr(torch.distributed.device_mesh, "init_device_mesh", lambda kind, shape: "mesh")
    part = Part()
    sharding.shard([part, None], torch.device("cpu"), mixed)
    names = {id(m): n or "part" for n, m in part.named_modules()}
    assert all(kw.pop("mesh") == "mesh" for _, kw in calls)
    return [(names[id(module)], kw) for module, kw in calls]


def test_shard_without_precision_passes_no_policy(monkeypatch):
    assert sharded_units(monkeypatch, None) == [("blocks.0", {}), ("blocks.1", {}), ("part", {})]


def test_shard_bf16_gives_batchnorm_its_own_fp32_unit_first(monkeypatch):
    units = sharded_units(monkeypatch, sharding.Precision(torch.bfloat16, torch.float32))
    assert units == [
        ("stem.1", {"mp_policy": FakePolicy(None, torch.float32, None, False)}),
        ("blocks.0", {"mp_policy": FakePolicy(torch.bfloat16, torch.float32)}),
        ("blocks.1", {"mp_policy": FakePolicy(torch.bfloat16, torch.float32)}),
        ("part", {"mp_policy": FakePolicy(torch.bfloat16, torch.float32, torch.float32)}),
    ]


def test_shard_fp32_parameters_need_no_batchnorm_unit(monkeypatch):
    units = sharded_units(monkeypatch, sharding.Precision(torch.float32, torch.bfloat16))
    assert [name for name, _ in units] == ["blocks.0", "blocks.1", "part"]
