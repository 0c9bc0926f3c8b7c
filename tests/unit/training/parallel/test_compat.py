"""clrun.training.parallel.compat: each newer torch API and its older equivalent, the older branches taken by
faking older signatures and modules (CI runs one torch), and the messages for a torch that has neither."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from clrun.errors import UserError
from clrun.training.model.network import Trainable
from clrun.training.parallel import compat, parallelize, sharding


class NewDDP:
    """DistributedDataParallel's constructor as torch >= 2.13 has it."""

    calls: list[dict] = []

    def __init__(self, module, device_ids=None, broadcast_buffers=None, find_unused_parameters=False,
                 forward_sync_buffers=None):
        type(self).calls.append({"broadcast_buffers": broadcast_buffers, "forward_sync_buffers": forward_sync_buffers})


class OldDDP:
    """DistributedDataParallel's constructor before torch 2.13: no forward_sync_buffers."""

    calls: list[dict] = []

    def __init__(self, module, device_ids=None, broadcast_buffers=True, find_unused_parameters=False):
        type(self).calls.append({"broadcast_buffers": broadcast_buffers})


class NoBufferKeywordDDP:
    def __init__(self, module, device_ids=None):
        pass


def test_torch_version_drops_the_local_build_tag(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu128")
    assert compat.torch_version() == "2.11.0"


def test_ddp_keyword_newer_torch():
    assert compat.ddp_no_forward_buffer_sync(NewDDP) == {"forward_sync_buffers": False}
    assert compat.ddp_copies_buffers_at_start({"forward_sync_buffers": False})


def test_ddp_keyword_older_torch():
    assert compat.ddp_no_forward_buffer_sync(OldDDP) == {"broadcast_buffers": False}
    assert not compat.ddp_copies_buffers_at_start({"broadcast_buffers": False})


def test_ddp_keyword_installed_torch_takes_it():
    keywords = compat.ddp_no_forward_buffer_sync(nn.parallel.DistributedDataParallel)
    major_minor = tuple(int(part) for part in compat.torch_version().split(".")[:2])
    expected = "forward_sync_buffers" if major_minor >= (2, 13) else "broadcast_buffers"
    assert keywords == {expected: False}


def test_ddp_without_either_keyword_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.0.1")
    with pytest.raises(UserError) as raised:
        compat.ddp_no_forward_buffer_sync(NoBufferKeywordDDP)
    assert str(raised.value) == (
        "several processes train under DistributedDataParallel, whose constructor in this torch (2.0.1) takes "
        "neither forward_sync_buffers (torch >= 2.13) nor broadcast_buffers; install torch >= 2.4, as cl-run "
        "requires")


def trainable() -> Trainable:
    return Trainable(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), nn.Module())


def recorded_broadcasts(monkeypatch) -> list[torch.Tensor]:
    sent: list[torch.Tensor] = []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda tensor, src: sent.append(tensor))
    return sent


@pytest.mark.parametrize("ddp, copies", [(NewDDP, False), (OldDDP, True)])
def test_data_parallel_copies_the_buffers_itself_on_older_torch(monkeypatch, ddp, copies):
    """On torch < 2.13 DDP's constructor leaves the buffers out of its first copy: data_parallel sends them."""
    ddp.calls.clear()
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", ddp)
    sent = recorded_broadcasts(monkeypatch)
    model = trainable()
    assert isinstance(parallelize.data_parallel(model, torch.device("cpu")), ddp)
    expected = {"broadcast_buffers": None, "forward_sync_buffers": False} if ddp is NewDDP else {"broadcast_buffers": False}
    assert ddp.calls == [expected]
    assert len(sent) == (len(list(model.buffers())) if copies else 0)  # BatchNorm: mean, var, count


def test_broadcast_buffers_writes_back_into_a_channels_last_buffer(monkeypatch):
    monkeypatch.setattr(torch.distributed, "broadcast", lambda tensor, src: tensor.fill_(7.0))
    module = nn.Module()
    module.register_buffer("grid", torch.zeros(1, 2, 3, 4).to(memory_format=torch.channels_last))
    parallelize.broadcast_buffers(module)
    assert torch.equal(module.grid, torch.full((1, 2, 3, 4), 7.0))


def fake_module(monkeypatch, name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def prototype_fsdp(monkeypatch, registered: list) -> types.ModuleType:
    """FSDP2 as torch 2.4 and 2.5 keep it: in torch.distributed._composable.fsdp only."""
    fake_module(monkeypatch, compat.FSDP_PUBLIC)  # FSDP1 only
    return fake_module(monkeypatch, compat.FSDP_PROTOTYPE, fully_shard=lambda m, mesh=None: m, FSDPModule=type(
        "FSDPModule", (), {}), register_fsdp_forward_method=lambda module, name: registered.append((module, name)))


def test_fsdp2_public_path():
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    assert compat.fsdp2() == (fully_shard, FSDPModule, register_fsdp_forward_method)


def test_fsdp2_first_place_when_the_public_path_lacks_it(monkeypatch):
    prototype = prototype_fsdp(monkeypatch, [])
    found = compat.fsdp2()
    assert found.fully_shard is prototype.fully_shard and found.FSDPModule is prototype.FSDPModule
    assert found.register_fsdp_forward_method is prototype.register_fsdp_forward_method


def test_sharding_registers_forward_methods_through_the_first_place(monkeypatch):
    registered: list = []
    prototype_fsdp(monkeypatch, registered)

    class TokenBackbone(nn.Module):
        def forward_tokens(self, x):
            return x

    unit = TokenBackbone()
    sharding.register_forward_methods(unit)
    assert registered == [(unit, "forward_tokens")]


def test_fsdp2_first_place_without_register_fsdp_forward_method_is_refused(monkeypatch):
    """An FSDP2 without register_fsdp_forward_method (pytorch/pytorch#125394, torch 2.4), which token
    backbones need, is refused."""
    monkeypatch.setattr(torch, "__version__", "2.3.1")
    fake_module(monkeypatch, compat.FSDP_PUBLIC)
    fake_module(monkeypatch, compat.FSDP_PROTOTYPE, fully_shard=object(), FSDPModule=type)
    with pytest.raises(UserError, match=r"this is torch 2\.3\.1"):
        compat.fsdp2()


def test_torch_without_fsdp2_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.3.1")
    fake_module(monkeypatch, compat.FSDP_PUBLIC)
    monkeypatch.setitem(sys.modules, compat.FSDP_PROTOTYPE, None)  # importing it fails
    with pytest.raises(UserError) as raised:
        sharding.reshard(nn.Linear(2, 2))
    assert str(raised.value) == (
        "train.strategy=fsdp needs FSDP2 (fully_shard and register_fsdp_forward_method: torch >= 2.4's "
        "torch.distributed._composable.fsdp or >= 2.6's torch.distributed.fsdp); this is torch 2.3.1: upgrade "
        "torch or use train.strategy=ddp")


def test_dcp_state_dict_installed():
    from torch.distributed.checkpoint import state_dict

    assert compat.dcp_state_dict() is state_dict


def test_dcp_state_dict_missing_functions_are_named(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.1.2")
    fake_module(monkeypatch, compat.DCP_STATE_DICT, get_model_state_dict=1, set_model_state_dict=1,
                StateDictOptions=1)
    with pytest.raises(UserError) as raised:
        compat.dcp_state_dict()
    assert str(raised.value) == (
        "sharded checkpoints (train.strategy=fsdp) need torch.distributed.checkpoint.state_dict with "
        "get_model_state_dict, set_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict, "
        "StateDictOptions (torch >= 2.3); this is torch 2.1.2, which lacks get_optimizer_state_dict, "
        "set_optimizer_state_dict: upgrade torch")


def test_dcp_to_torch_save(monkeypatch):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    assert compat.dcp_to_torch_save() is dcp_to_torch_save
    monkeypatch.setattr(torch, "__version__", "2.2.0")
    monkeypatch.setitem(sys.modules, compat.DCP_FORMAT_UTILS, None)
    with pytest.raises(UserError) as raised:
        compat.dcp_to_torch_save()
    assert str(raised.value) == (
        "reading a sharded checkpoint in one process needs torch.distributed.checkpoint.format_utils."
        "dcp_to_torch_save (torch >= 2.3); this is torch 2.2.0: upgrade torch")


def test_save_planner_keeps_replicated_tensors_on_the_lowest_rank(monkeypatch):
    import torch.distributed.checkpoint as dcp

    assert compat.dcp_save_planner_lowest_rank().dedup_save_to_lowest_rank is True

    class OlderPlanner:  # before the keyword: deduplicated onto the lowest rank, always
        def __init__(self, flatten_state_dict=True, flatten_sharded_tensors=True, dedup_replicated_tensors=None):
            pass

    monkeypatch.setattr(dcp, "DefaultSavePlanner", OlderPlanner)
    assert isinstance(compat.dcp_save_planner_lowest_rank(), OlderPlanner)
