"""The loss alarm: an epoch loss that explodes or stops changing, for ``patience`` epochs in a row.

The collapse alarm watches the representation; this one watches the number the optimizer minimizes.
A loss that blows up (a temperature far too low, a learning rate far too high) can stay finite for a
whole run, so the non-finite check of a step never fires and the run ends with exit 0 and a useless
encoder; a loss that no longer moves at all means the network stopped learning (dead units after a
too-high learning rate, a zero learning rate, frozen weights). Augmentations make every epoch's mean
loss differ a little while anything learns, so "no change" is a relative change below a small
threshold. Both are checked every epoch, whatever ``health.every`` is: the loss is already computed.

A loss may also declare how its own metrics look when it collapses (``collapse_signals``, a tuple of
``clrun.loss_kit.CollapseSignal``: a uniform teacher, or one prototype taking every image); those
are checked here too, on the epoch's mean of each metric.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Sequence

from clrun.health.alarm import Streaks
from clrun.loss_kit import CollapseSignal
from clrun.recipe.schema import AlarmSection

DIVERGED_ADVICE = ("The loss diverged: lower optimizer.lr, set train.grad_clip, or check the loss's own "
                   "settings (a temperature, a weight)")
CONSTANT_ADVICE = ("A constant loss means the network stopped learning: dead units after a too high "
                   "optimizer.lr, a zero learning rate, or frozen weights")


@dataclass
class LossSignal:
    """One way the epoch loss is out of bounds: ``name`` (``loss_max``, ``loss_growth``, ``loss_constant``)
    and the sentence that says so with the threshold's recipe key."""

    name: str
    text: str


class LossAlarm:
    """Counts, per signal, the consecutive epochs the loss is out of bounds; ``observe`` returns the
    signals out of bounds now and those that reached ``patience`` (the ones that fire).

    The reference for ``max_loss_growth`` is the first epoch this process observed (after ``--resume``,
    the first resumed epoch), and, like the collapse alarm's, the streaks are not checkpointed."""

    def __init__(self, section: AlarmSection, declared: Sequence[CollapseSignal] = ()) -> None:
        self.section = section
        self.declared = tuple(declared)  # the loss's own collapse signals
        self.first: tuple[int, float] | None = None  # (epoch, loss) of the first epoch observed
        self.previous: tuple[int, float] | None = None
        self.streaks = Streaks()

    def beyond(self, loss: float, metrics: dict[str, float] | None = None) -> list[LossSignal]:
        """The signals ``loss`` raises against the epochs observed before it, and the loss's declared
        signals its epoch ``metrics`` raise."""
        s, out = self.section, []
        for signal in self.declared:
            value = (metrics or {}).get(signal.metric)
            if value is not None and signal.beyond(value):
                out.append(LossSignal(signal.metric, signal.describe(value)))
        # NaN counts as beyond, as it does for the collapse alarm.
        if s.max_loss is not None and not loss <= s.max_loss:
            out.append(LossSignal("loss_max", f"loss = {loss:.4g} > {s.max_loss:g} (health.alarm.max_loss)"))
        # A growth factor is meaningful for a positive loss only (a negative cosine loss is below zero).
        if s.max_loss_growth is not None and self.first is not None and self.first[1] > 0:
            epoch, first = self.first
            if loss > s.max_loss_growth * first:
                out.append(LossSignal("loss_growth", f"loss = {loss:.4g} > {s.max_loss_growth:g} x epoch {epoch}'s "
                                                     f"{first:.4g} (health.alarm.max_loss_growth)"))
        if s.min_loss_change is not None and self.previous is not None:
            epoch, previous = self.previous
            change = abs(loss - previous)
            if change <= s.min_loss_change * abs(previous):
                relative = change / abs(previous) if previous else 0.0
                out.append(LossSignal("loss_constant", f"loss = {loss:.6g} changed by {relative:.2g} of epoch {epoch}'s "
                                                       f"{previous:.6g}, below {s.min_loss_change:g} "
                                                       f"(health.alarm.min_loss_change)"))
        return out

    def observe(self, metrics: dict[str, float], epoch: int) -> tuple[list[LossSignal], list[LossSignal]]:
        """Record epoch ``epoch``'s mean metrics (without a ``loss``, nothing is checked)."""
        loss = metrics.get("loss")
        if self.section.action == "off" or loss is None:
            return [], []
        now = self.beyond(loss, metrics)
        self.streaks.update({signal.name for signal in now}, epoch)
        if self.first is None:
            self.first = (epoch, loss)
        self.previous = (epoch, loss)
        fired = [signal for signal in now if self.streaks.count[signal.name] >= self.section.patience]
        return now, fired

    def message(self, fired: list[LossSignal], epoch: int) -> str:
        details = "; ".join(
            f"{signal.text} for {self.streaks.count[signal.name]} epochs in a row (since epoch {self.streaks.since[signal.name]})"
            for signal in fired
        )
        return f"loss alarm at epoch {epoch}: {details}"

    @staticmethod
    def advice(fired: list[LossSignal]) -> str:
        """What to change, for the kinds of signal in ``fired``."""
        names = {signal.name for signal in fired}
        parts = []
        if names & {"loss_max", "loss_growth"}:
            parts.append(DIVERGED_ADVICE)
        if "loss_constant" in names:
            parts.append(CONSTANT_ADVICE)
        if names - {"loss_max", "loss_growth", "loss_constant"}:
            parts.append("The loss says it is collapsing (each signal above names what to change)")
        return ". ".join(parts)
