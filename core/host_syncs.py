"""Counting, on the CPU, the calls that would make a GPU wait for the host while a recipe trains.

A GPU runs ahead of the Python that launches its kernels until Python asks for a value: ``.item()``,
``.tolist()``, ``bool()``/``int()``/``float()`` of a tensor, ``.numpy()``, ``.cpu()``, an op whose output
size depends on the data (``nonzero``, boolean-mask indexing, ``unique``, ``bincount``...), or a blocking
upload of host data (``torch.tensor(values, device=...)``, ``host.to(device)`` without ``non_blocking``).
On a CPU every tensor is on the host, so the counter tells them apart by where a tensor came from: a
tensor made during the count by a host-side factory (no ``device=``, ``device="cpu"`` spelled out, or
the ``.device`` of host data: a random draw for crop boxes, an optimizer's step counter, kornia's and
torch.distributions' draws, which name their samplers' device), or computed from such tensors only, is
host data, and reading it costs nothing on a GPU either; every other tensor (parameters, buffers, the images once moved to the training
device, anything computed from them) would live on the device, and reading it is a sync.

``with HostSyncCounter() as counter:`` classifies every tensor made inside; ``counter.counting = True``
starts counting syncs into ``counter.counts`` by call site (the data loader's own work is never counted:
on a GPU it runs in worker processes). Used by ``cl-run check -v`` and by the tests' per-step budget
(tests/helpers/host_syncs.py).
"""

from __future__ import annotations

import sys
import traceback
import weakref
from collections import Counter
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

# Reading a value back to Python.
READS = {Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__,
         Tensor.numpy, Tensor.cpu}
# Ops whose output's size the host learns from the device.
DATA_DEPENDENT = {torch.nonzero, Tensor.nonzero, torch.argwhere, Tensor.argwhere, torch.masked_select,
                  Tensor.masked_select, torch.unique, Tensor.unique, torch.unique_consecutive, torch.bincount,
                  Tensor.bincount, torch.Tensor.nonzero_static}
# Factories that take host data (Python values) and copy it to ``device=``: a blocking upload.
FROM_VALUES = {torch.tensor, torch.as_tensor}
UPLOADS = {Tensor.to, Tensor.cuda}
IGNORED_FRAMES = ("torch/utils/data/",)  # the data loader's work (on GPUs it runs in worker processes)
# A call site is the innermost frame outside torch (torch's dispatch, nn.Module's call, decorators) and this file.
OWN_FRAMES = ("site-packages/torch/", __file__)
# Helpers that copy host data to a CUDA device with ``non_blocking=True`` (and blocking to any other device,
# the CPU of a counted run included): counted as the copy they make on a GPU. (function name, file)
NON_BLOCKING_HELPERS = {("_to_device_nonblocking", "kornia/core/utils.py")}
DEVICE_PROPERTY = torch._C.TensorBase.__dict__["device"]  # ``t.device``, seen by the mode as its __get__


class _Tensors:
    """A set of tensors by identity that does not keep them alive (a WeakSet compares tensors by value)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def __contains__(self, t: Tensor) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t

    def add(self, t: Tensor) -> None:
        key = id(t)
        self._refs[key] = weakref.ref(t, lambda _, key=key: self._refs.pop(key, None))

    def discard(self, t: Tensor) -> None:
        if t in self:
            del self._refs[id(t)]


def _is_bool_index(index: Any) -> bool:
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in tree_leaves(index))


class HostSyncCounter(TorchFunctionMode):
    """Counts host syncs by call site (``site``: file:line of the innermost frame outside torch's own
    dispatch) into ``counts`` while active; ``paused`` stops counting (tensors are still classified)."""

    def __init__(self) -> None:
        super().__init__()
        self.host = _Tensors()
        # Device objects read from host tensors (``t.device``: a new object per read), kept so no id is reused.
        self.host_devices: dict[int, torch.device] = {}
        self.counts: Counter[str] = Counter()
        self.counting = False

    def _on_host(self, t: Tensor) -> bool:
        return t in self.host

    def _names_host(self, args: tuple, kwargs: dict) -> bool:
        """A device argument read from host data (``device=x.device`` of a host ``x``): the host."""
        target = kwargs.get("device", args[0] if args else None)
        return isinstance(target, torch.device) and self.host_devices.get(id(target)) is target

    def _sync_reason(self, func: Any, args: tuple, kwargs: dict, inputs: list[Tensor]) -> str | None:
        on_device = [t for t in inputs if not self._on_host(t)]
        if func in READS:
            return func.__name__ if on_device else None
        if func in DATA_DEPENDENT:
            return func.__name__ if on_device else None
        if func is torch.where and len(args) + len(kwargs) == 1:
            return "where(condition)" if on_device else None
        if func in (torch.repeat_interleave, Tensor.repeat_interleave) and "output_size" not in kwargs:
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            if isinstance(repeats, Tensor) and not self._on_host(repeats):
                return "repeat_interleave"
        if func in (Tensor.__getitem__, Tensor.__setitem__, Tensor.index_put_, Tensor.index_put, torch.index_put):
            if on_device and _is_bool_index(args[1:]):
                return f"{func.__name__} with a boolean mask"
        if func in FROM_VALUES and _names_device((), kwargs) and not self._names_host((), kwargs) \
                and not isinstance(args[0], Tensor):
            return f"{func.__name__}(values, device=...)"
        if func in UPLOADS and inputs:
            if _to_host(args[1:], kwargs) or self._names_host(args[1:], kwargs):
                return "copy to the host" if not self._on_host(inputs[0]) else None
            if self._on_host(inputs[0]) and not kwargs.get("non_blocking", False) and not _in_non_blocking_helper():
                if func is Tensor.cuda or _names_device(args[1:], kwargs):
                    return "blocking upload of host data"
        if func is Tensor.copy_ and self._on_host(args[0]) and not self._on_host(args[1]):
            return "copy to host"
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if self.counting:
            reason = self._sync_reason(func, args, kwargs, inputs)
            if reason is not None:
                self._record(reason)
        out = func(*args, **kwargs)
        # Host data: made without naming a device, from host data only (a copy to the host keeps it there).
        names_device = _names_device(args[1:] if func in UPLOADS else (), kwargs) or func is Tensor.cuda
        names_host = self._names_host(args[1:] if func in UPLOADS else (), kwargs)
        if getattr(func, "__self__", None) is DEVICE_PROPERTY and inputs and self._on_host(inputs[0]):
            self.host_devices[id(out)] = out
        if func is Tensor.copy_:
            host = self._on_host(args[0])
        elif func is Tensor.cpu or (func in UPLOADS and (_to_host(args[1:], kwargs) or names_host)):
            host = True
        else:
            host = all(self._on_host(t) for t in inputs) and (names_host or not names_device)
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                if host:
                    self.host.add(t)
                elif t in self.host and func is not Tensor.copy_:
                    self.host.discard(t)  # an in-place op wrote device data into it
        return out

    def _record(self, reason: str) -> None:
        frames = traceback.extract_stack()  # this file's own frames are skipped below
        if any(part in f.filename for f in frames for part in IGNORED_FRAMES):
            return
        site = next((f for f in reversed(frames) if not any(own in f.filename for own in OWN_FRAMES)), None)
        where = f"{_short(site.filename)}:{site.lineno} {site.name}" if site is not None else "<torch>"
        self.counts[f"{where} ({reason})"] += 1


def _names_device(args: tuple, kwargs: dict) -> bool:
    """Whether a call names a device for its output (``device="cpu"`` spelled out means the host)."""
    if kwargs.get("device") is not None:
        return kwargs["device"] != "cpu"
    return any(isinstance(a, (torch.device, str)) or (isinstance(a, Tensor)) for a in args[:1])


def _in_non_blocking_helper() -> bool:
    """Whether the call comes from one of ``NON_BLOCKING_HELPERS`` (a few frames up: the mode's own)."""
    frame = sys._getframe(3)
    for _ in range(4):
        if frame is None:
            return False
        if any(frame.f_code.co_name == name and frame.f_code.co_filename.endswith(path)
               for name, path in NON_BLOCKING_HELPERS):
            return True
        frame = frame.f_back
    return False


def _to_host(args: tuple, kwargs: dict) -> bool:
    """``.to("cpu")``: on a CPU run the only way to tell a copy to the host from one to the training device."""
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, str) and target == "cpu"


def _short(filename: str) -> str:
    """An installed package's file from its package folder (kornia/...), cl-run's from the repository's."""
    if "site-packages/" in filename:  # first: a package may have a core/ of its own (kornia/core/utils.py)
        return filename.split("site-packages/", 1)[1]
    for marker in ("/core/", "/plugins/"):
        if marker in filename:
            return marker[1:] + filename.split(marker, 1)[1]
    return filename
