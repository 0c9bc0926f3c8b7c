"""CUDA random states restored onto the devices a resumed process has (checked on the CPU, torch.cuda faked)."""

from __future__ import annotations

import warnings

import pytest
import torch

from clrun.training.checkpointing import random_state


@pytest.fixture
def cuda(monkeypatch):
    """A fake torch.cuda with ``cuda.visible`` devices; ``cuda.set`` records (state, device) in call order."""

    class Fake:
        visible = 2
        set: list = []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: Fake.visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": Fake.set.append((state, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states(Fake.visible))
    Fake.set = []
    return Fake


def states(n: int) -> list[torch.Tensor]:
    return [torch.full((4,), i, dtype=torch.uint8) for i in range(n)]


def restored(cuda) -> list[tuple[int, int]]:
    """(the saved state's index, the device it was set on), per call."""
    return [(int(state[0]), device) for state, device in cuda.set]


def test_same_device_count_restores_every_device_silently(cuda):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        random_state.set_cuda_rng_states(states(2))
    assert restored(cuda) == [(0, 0), (1, 1)]


def test_fewer_visible_devices_restore_the_first_ones_with_a_warning(cuda):
    with pytest.warns(UserWarning) as caught:
        random_state.set_cuda_rng_states(states(8))
    assert restored(cuda) == [(0, 0), (1, 1)]
    assert [str(w.message) for w in caught] == [
        "the checkpoint holds the random state of 8 CUDA device(s) and this process sees 2: restoring the first 2"]


def test_more_visible_devices_restore_the_saved_ones_with_a_warning(cuda):
    cuda.visible = 4
    with pytest.warns(UserWarning, match="holds the random state of 1 CUDA device.s. and this process sees 4"):
        random_state.set_cuda_rng_states(states(1))
    assert restored(cuda) == [(0, 0)]


def test_a_cpu_checkpoint_or_a_cpu_machine_sets_no_cuda_state(cuda, monkeypatch):
    random_state.set_cuda_rng_states([])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    random_state.set_cuda_rng_states(states(2))
    assert cuda.set == []


def test_set_rng_state_restores_cuda_and_the_cpu_streams(cuda):
    saved = random_state.rng_state()
    expected = torch.rand(3)
    saved["cuda"] = states(3)
    with pytest.warns(UserWarning, match="3 CUDA device.s. and this process sees 2"):
        random_state.set_rng_state(saved)
    assert torch.equal(torch.rand(3), expected)
    assert restored(cuda) == [(0, 0), (1, 1)]
