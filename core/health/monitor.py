"""The health monitor: a built-in run callback that measures the representation every few epochs.

It embeds two augmented views of a fixed sample of training images with the current network as the
loss sees it (train mode: BatchNorm normalizes with batch statistics; its running statistics lag for the
first hundred steps and would make a healthy young network look collapsed in eval mode). The network's
buffers are restored afterwards and the views are drawn in a forked random stream seeded the same way
each time: checks are comparable across epochs, and turning the monitor on or off leaves the training,
and so its results, unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from clrun import distributed
from clrun.errors import TrainingHalted
from clrun.health.alarm import CollapseAlarm, Signal
from clrun.health.loss_alarm import LossAlarm
from clrun.health.metrics import health_metrics, histogram, pair_cosines
from clrun.hookspecs import hookimpl
from clrun.recipe.schema import HealthSection
from clrun.streams import Stream
from clrun.training.data import stacked

COLLAPSE_ADVICE = ("A loss without negatives needs a predictor, a stop-gradient or a momentum target to avoid "
                   "collapse; also try a lower optimizer.lr")
WARN_ONLY = "To only be warned, set health.alarm.action=warn"


class HealthMonitor:
    """Adds ``alignment``, ``uniformity``, ``std_sqrt_d``, ``rankme``, ``pos_cosine``, ``neg_cosine`` of
    the backbone features (suffix ``_backbone``) and of the projector outputs (``_projector``) to the
    epoch's metrics (a loss's own ``pos_cosine`` is its training batches', so the names differ), appends
    each check with similarity histograms to the run folder's health file, and acts on the alarm: the
    collapse alarm on those signals, the loss alarm (``clrun.health.loss_alarm``) on every epoch's loss.
    A training data set that skips unreadable files (its ``skipped_images`` is not None) has that count
    added to every epoch's metrics and to the run's final ones.

    Its epoch hook wraps every other callback's: it measures first (so the recipe's callbacks and the
    logs see its metrics), and acts on the alarm last, after the epoch was written and printed: ``warn``
    prints, ``halt`` stops the run with a message that names the signal and the last checkpoint.

    The alarms' streaks are not checkpointed: after ``--resume`` they start again from zero."""

    def __init__(self, section: HealthSection, dataset: Dataset, seed: int) -> None:
        self.section, self.dataset, self.seed = section, dataset, seed
        self.alarm = CollapseAlarm(section.alarm)
        self.loss_alarm = LossAlarm(section.alarm)
        self.collapsing: list[Signal] = []  # the collapse signals beyond their thresholds at the last check
        self.images: Tensor | None = None
        self.places: Tensor | None = None  # the images' places, when the data set letterboxes them
        self.latest: dict[str, float] = {}

    def clrun_run_start(self, run) -> None:
        self.loss_alarm.declared = tuple(getattr(run.parts.loss_fn, "collapse_signals", ()))
        self.images, self.places = fixed_items(self.dataset, self.seed, self.section.samples)

    @hookimpl(wrapper=True)
    def clrun_epoch_end(self, run, epoch: int, metrics: dict[str, float]):
        fired = self.check(run, epoch, metrics)
        result = yield  # every other callback, the metrics file and the console
        if fired is not None:
            self.act(run, *fired)
        return result

    def check(self, run, epoch: int, metrics: dict[str, float]) -> tuple[str, str] | None:
        """Count skipped images, watch the loss, measure (on check epochs), record, and return the alarms'
        message and advice if one fired."""
        skipped = self.skipped_images()
        if skipped is not None:
            metrics["skipped_images"] = skipped
        loss_now, loss_fired = self.loss_alarm.observe(metrics, epoch)
        collapse_fired: list[Signal] = []
        measured = not (epoch % self.section.every and epoch < run.recipe.train.epochs)
        if measured:
            metrics_now, hists = self.measure(run)
            metrics.update(metrics_now)
            self.latest = metrics_now
            self.collapsing, collapse_fired = self.alarm.observe(metrics_now, epoch)
        halting = self.section.alarm.action == "halt"
        # While a signal is beyond its threshold the state may be collapsing or diverging: keep the last
        # healthy checkpoint.
        run.checkpoint_hold = "health" if (halting and (self.collapsing or loss_now)) else None
        messages, advice = [], []
        if collapse_fired:
            messages.append(self.alarm.message(collapse_fired, epoch))
            advice.append(COLLAPSE_ADVICE)
        if loss_fired:
            messages.append(self.loss_alarm.message(loss_fired, epoch))
            advice.append(self.loss_alarm.advice(loss_fired))
        message = "; ".join(messages) or None
        if measured:
            record = {
                "epoch": epoch, "step": run.step, "metrics": metrics_now, "histograms": hists,
                "alarm": {"branch": self.section.alarm.branch,
                          "signals": [c.metric for c in self.collapsing] + [s.name for s in loss_now],
                          "fired": message},
            }
            if distributed.is_main():
                run.folder.append_health(record)
        return None if message is None else (message, ". ".join(advice))

    def skipped_images(self) -> int | None:
        """The training data set's count of skipped unreadable files, summed over the processes of a
        distributed run (their samplers read disjoint files; one in the health sample, which every
        process reads, counts once per process); None when it skips nothing by design."""
        count = getattr(self.dataset, "skipped_images", None)
        if count is None:
            return None
        if distributed.active():
            return sum(distributed.gather_objects(int(count)))
        return int(count)

    def act(self, run, message: str, advice: str) -> None:
        if self.section.alarm.action == "warn":
            if distributed.is_main():
                print(f"warning: {message} (health.alarm.action=halt stops the run)", flush=True)
            return
        if run.checkpoint_epoch is None:
            kept = "no checkpoint was written: the signal appeared before the first one"
        else:
            kept = f"the last healthy checkpoint (epoch {run.checkpoint_epoch}) is {run.folder.checkpoint}"
        raise TrainingHalted(f"{message}; {kept}. {advice}. {WARN_ONLY}")

    # First: its collective (skipped_images) must come before rank 0's evaluators, not after them (the
    # other processes would wait for rank 0 in it, under the process group's timeout).
    @hookimpl(tryfirst=True)
    def clrun_run_end(self, run, metrics: dict[str, float]) -> None:
        metrics.update(self.latest)  # the final check belongs in the run's summary
        skipped = self.skipped_images()
        if skipped is not None:
            metrics["skipped_images"] = skipped

    @torch.no_grad()
    def measure(self, run) -> tuple[dict[str, float], dict[str, dict]]:
        network, views = run.network, run.parts.views
        buffers = [b.clone() for b in network.buffers()]  # BatchNorm running statistics, restored below
        devices = [run.device] if run.device.type == "cuda" else []
        feats: list[list[Tensor]] = [[], []]
        projs: list[list[Tensor]] = [[], []]
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                size = self.section.batch_size
                places = [None] * len(self.images) if self.places is None else self.places.split(size)
                for batch, batch_places in zip(self.images.split(size), places):
                    pair = two_views(views, batch.to(run.device), run, batch_places)
                    for k, x in enumerate(pair):
                        f = network.backbone(x)
                        feats[k].append(f.float().cpu())
                        projs[k].append(network.projector(f).float().cpu())
        finally:
            for b, saved in zip(network.buffers(), buffers):
                b.copy_(saved)
        metrics, hists = {}, {}
        for branch, suffix, (a, b) in (("backbone", "_backbone", feats), ("projector", "_projector", projs)):
            a, b = torch.cat(a), torch.cat(b)
            metrics.update({f"{k}{suffix}": v for k, v in health_metrics(a, b).items()})
            positive, negative = pair_cosines(a, b)
            pos_h, neg_h = histogram(positive), histogram(negative)
            hists[branch] = {"edges": pos_h["edges"], "positive": pos_h["counts"], "negative": neg_h["counts"]}
        return metrics, hists


def fixed_sample(dataset: Dataset, seed: int, count: int) -> Tensor:
    """``count`` training images drawn once from ``seed`` (uint8, stacked): the same at every check, in every
    run of the recipe."""
    return fixed_items(dataset, seed, count)[0]


def fixed_items(dataset: Dataset, seed: int, count: int) -> tuple[Tensor, Tensor | None]:
    """``fixed_sample``'s images and their places on the canvas (None unless the data set letterboxes)."""
    if isinstance(dataset, Stream):  # no random access: the stream's first images
        return stacked(dataset.examples(min(count, dataset.epoch_size)))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7919))
    return stacked([dataset[int(i)] for i in order[:count]])


def two_views(views, images: Tensor, run, places: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The first two global views of ``images`` (a positive pair); with a single global view, that view
    and the un-augmented image."""
    made = views(images, places)
    pair = [v for v, g in zip(made, views.is_global) if g][:2]
    if len(pair) < 2:
        pair = [made[0], run.preprocess(images)]
    return pair[0], pair[1]
