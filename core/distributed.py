"""Distributed training: the process group torchrun sets up, and the collectives losses use.

cl-run does no process management of its own: ``torchrun --nproc_per_node=N -m clrun RECIPE`` starts
the processes and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the training loop joins the group
(NCCL on CUDA, gloo on the CPU). Outside torchrun, or with one process, every function here is the
identity or a no-op, so a loss written against this module runs unchanged on one device.

For loss authors:

    gather(t)           rows of ``t`` from every rank, rank order, *with* gradients: the backward
                        pass sends each rank the gradient of its own rows, summed over all ranks
    gather_no_grad(t)   the same without gradients (keys for a queue)
    average(t)          element-wise mean over ranks, *with* gradients: the backward pass gives every
                        rank the mean of all ranks' gradients of the result (a batch statistic that
                        every rank's loss uses, e.g. SIGReg's characteristic function)
    all_reduce_sum(t)   element-wise sum over ranks, without gradients
    all_reduce_max(t)   element-wise max over ranks, without gradients
    rank(), world_size(), is_main()

For callback authors: callbacks run on rank 0 only and must not call collectives; a copy of the
network that a callback trains must go through ``without_sync_batchnorm``.

For the authors of torchrun scripts that call ``clrun.train`` (the ``cl-run`` command does this itself):
end the process with ``exit_process(code)``, not by returning from the script (see ``exit_process``).

How a loss is made exact across ranks: DDP *averages* parameter gradients over ranks. A loss that is
a mean over samples of per-sample terms needs nothing (the mean of the ranks' means is the mean
over the whole batch when every rank has the same number of samples). A loss that couples samples
(negatives, batch statistics) gathers what it couples over with ``gather``.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import os
import sys
import threading
import warnings
from typing import Any, NoReturn, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the same variables)
    with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the running process group; 0 without one."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes in the running process group; 1 without one."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes the run folder, logs and reports."""
    return rank() == 0


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 outside torchrun), also when no group is running."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine as the launcher set it (``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def start(device_type: str) -> bool:
    """Join the process group torchrun describes in the environment; returns whether this call
    started it (and so should end it). NCCL for CUDA devices, gloo for the CPU."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    # A generous timeout: rank 0 alone runs mid-training evaluations while the others wait.
    timeout = datetime.timedelta(minutes=60)
    store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun's restarts (--max-restarts) reuse its store, where the dead attempt's processes left
    # their addresses under the same keys: a restarted process would connect to those and fail
    # ("Gloo connectFullMesh failed ... Connection refused", pytorch/pytorch#167288). Each attempt
    # gets keys of its own.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"clrun/attempt_{attempt}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank_, world_size=world, timeout=timeout)
    global _store
    _store = store
    return True


_store: Optional["dist.Store"] = None  # the running group's store (torchrun's), for ``first_to_report``


def stop() -> None:
    """Leave the process group, if one is running.

    This drops c10d's own references to the group, not the group: the modules that use it (DDP's
    reducer, FSDP's parameter groups, their device mesh) keep it, and with it its backend's threads
    (gloo's), for as long as they live. gloo's ``shutdown`` does not stop them. So a process ends with
    those threads still running, whatever the order of the calls before: ``exit_process`` is how it
    ends without aborting."""
    global _store
    _store = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End this process with exit code ``code``, without the interpreter's finalization: for a process that
    joined a process group (under torchrun, a ``cl-run`` command or a script that called ``clrun.train``).

    Why: the group's backend threads outlive ``stop`` (see there) and are still running when the process
    ends. A gloo worker thread that finishes a collective releases the collective's tensors a moment after
    the process's main thread was released from its wait; when the last reference to a tensor that Python
    created goes with them, the thread takes the GIL to free the tensor's Python object. If the main thread
    has meanwhile reached the interpreter's finalization (the script ended), Python ends a thread that asks
    for the GIL there by unwinding it (``pthread_exit``) through C++ destructors that may not throw:
    ``std::terminate``, "terminate called without an active exception", SIGABRT. Under load the gloo thread
    can wait for a CPU long enough for that (a few launches in a hundred: ``bench/stress_teardown.py``), and torchrun
    then fails the job and restarts it. No order of joins, barriers and ``destroy_process_group`` calls
    closes that window while the modules keep the group; ending the process without the finalization does.

    What the finalization would have done that matters is done here first, with the interpreter whole:
    Python threads that are not daemons are joined (as Python's shutdown does: cl-run's background
    checkpoint writer is already joined by then), ``atexit`` handlers run (logging's flush, DataLoader and
    other ``multiprocessing`` children stopped), and Python's and C's output buffers are flushed. Then
    ``os._exit``: the remaining native threads (gloo's, torch's pools) end with the process, at once.
    """
    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
                pass
        try:
            ctypes.CDLL(None).fflush(None)  # C stdio (native libraries' messages)
        except (OSError, AttributeError):
            pass
        os._exit(code)


def first_to_report(message: str) -> bool:
    """Whether this process is the first of its group to report the error ``message``: several processes that
    fail the same way at the same time (a setting every rank checks, a data set missing on every node) then
    make one report between them. True without a running group, or when its store cannot answer at once."""
    if _store is None:
        return True
    import hashlib

    key = "reported/" + hashlib.sha256(message.encode()).hexdigest()
    try:
        _store.set_timeout(datetime.timedelta(seconds=10))
        return _store.add(key, 1) == 1
    except Exception:  # the store is gone (torchrun is stopping the group): report rather than stay silent
        return True


# What a collective raises when another process of the group is gone (it crashed or was stopped): gloo
# finds the connection closed or reset; NCCL reports the remote error.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited")


def peer_gone(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a collective failing because another process
    of the group is gone: that process, or torchrun, says why; this one has nothing of its own to add.
    Only torch's own errors count (a plain RuntimeError or a ``DistError``): a data set's error that quotes a
    connection reset by its server is this process's failure."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        torchs = type(error) is RuntimeError or isinstance(error, getattr(dist, "DistError", ()))
        if torchs and any(words in str(error) for words in PEER_GONE):
            return True
        error = error.__cause__ or error.__context__
    return False


def gather(tensor: Tensor) -> Tensor:
    """``tensor`` (n, ...) from every rank concatenated in rank order, (world * n, ...), differentiable."""
    if not active():
        return tensor
    from torch.distributed.nn.functional import all_gather

    # Deprecated in favour of a private module (torch.distributed._functional_collectives); this one is
    # public, works on gloo (its backward emulates reduce-scatter) and its gradients are tested here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(tensor.contiguous())
    return torch.cat(parts, dim=0)


class _Average(torch.autograd.Function):
    """Element-wise mean over ranks. Backward: the mean over ranks of the incoming gradients.

    Why the mean and not the local gradient: every rank's loss uses the averaged value, so the global
    objective (the mean of the ranks' losses, which DDP's gradient averaging optimizes) depends on
    rank r's input through every rank's loss. With the local gradient alone, each rank's contribution
    is 1 / world_size too small: the bug LightlySSL shipped in its SIGReg (#1923).
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / world_size()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad / world_size()


def average(tensor: Tensor) -> Tensor:
    """The element-wise mean of ``tensor`` over ranks, differentiable (see ``_Average``); ``tensor`` itself
    when one process trains."""
    return _Average.apply(tensor) if active() else tensor


@torch.no_grad()
def gather_no_grad(tensor: Tensor) -> Tensor:
    """``tensor`` (n, ...) from every rank concatenated in rank order, (world * n, ...), without gradients
    (keys for a queue that every rank holds the same); ``tensor`` itself when one process trains."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over ranks, without gradients; ``tensor`` itself when one
    process trains."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: Tensor) -> Tensor:
    """The element-wise maximum of ``tensor`` over ranks, without gradients; ``tensor`` itself when one
    process trains."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


@torch.no_grad()
def _all_reduce(tensor: Tensor, op: "dist.ReduceOp.RedOpType") -> Tensor:
    """A reduced copy of ``tensor`` (the input is left as it is)."""
    if not active():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=op)
    return out


def mean_over_ranks(values: Tensor) -> Tensor:
    """The mean over ranks of a 1-d tensor of scalars (metrics), in one collective."""
    return all_reduce_sum(values) / world_size() if active() else values


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run folder rank 0 created)."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def without_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every SyncBatchNorm layer replaced by a per-process BatchNorm (same weights and
    statistics), in place. For a copy that one rank trains alone (a fine-tuning evaluator): a
    SyncBatchNorm in training mode would wait for the other ranks in a collective they never join."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            local = LocalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(child.weight.device if child.affine else "cpu")
            local.load_state_dict(child.state_dict())
            local.train(child.training)
            setattr(module, name, local)
        else:
            without_sync_batchnorm(child)
    return module


class LocalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over this process's batch, for inputs of any rank >= 2 (like SyncBatchNorm, which
    does not know whether it replaced a BatchNorm1d, 2d or 3d)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
