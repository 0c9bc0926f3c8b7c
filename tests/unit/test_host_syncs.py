"""The CPU host-sync counter (clrun.host_syncs) counts what would make a GPU wait, and only that: reads and
data-dependent ops on device data and blocking uploads of host data; host draws and their reads are free."""

from __future__ import annotations

import torch

from clrun.host_syncs import HostSyncCounter


def counted(work) -> dict[str, int]:
    weight = torch.nn.Parameter(torch.randn(4))  # made before the count: device data, as a module's weights are
    with HostSyncCounter() as counter:
        counter.counting = True
        work(weight)
    return {site.split(" (", 1)[1][:-1]: n for site, n in counter.counts.items()}  # "file:line function (reason)"


def test_reads_of_device_data_are_counted():
    def work(w):
        loss = (w * 2).sum().detach()
        loss.item(), bool(loss > 0), float(loss), (w > 0).nonzero(), w[w > 0], loss.tolist()

    assert counted(work) == {"item": 1, "__bool__": 1, "__float__": 1, "nonzero": 1,
                             "__getitem__ with a boolean mask": 1, "tolist": 1}


def test_host_draws_and_their_reads_are_free():
    def work(w):
        boxes = torch.rand(8, 4, dtype=torch.float64)  # drawn on the host
        boxes.tolist(), int(boxes.argmax()), bool((boxes > 0.5).any())
        w.mul(torch.as_tensor(boxes[:4, 0].float()).to(w.device, non_blocking=True))  # uploaded without a wait
        steps = torch.tensor(0.0, device="cpu")  # an optimizer's step counter, spelled out as the host
        float(steps + 1)

    assert counted(work) == {}


def test_a_blocking_upload_and_values_sent_to_the_device_are_counted():
    def work(w):
        w.add(torch.rand(4).to(w.device))  # host data copied without non_blocking
        w.add(torch.tensor([1.0, 2.0, 3.0, 4.0], device=w.device))  # Python values copied to the device

    assert counted(work) == {"blocking upload of host data": 1, "tensor(values, device=...)": 1}
