"""The collapse alarm: which health signals are beyond their thresholds, and for how many checks."""

from __future__ import annotations

from dataclasses import dataclass

from clrun.recipe.schema import AlarmSection


@dataclass
class Signal:
    metric: str
    value: float
    threshold: float
    below: bool  # True: fires when the value is below the threshold

    def describe(self, branch: str) -> str:
        op = "<" if self.below else ">"
        return f"{branch} {self.metric} = {self.value:.4g} {op} {self.threshold:g}"


class Streaks:
    """For each named signal, how many checks in a row it has been beyond its threshold, and since which
    epoch; a check without the signal ends its streak. The alarms fire on a streak of ``patience``."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.since: dict[str, int] = {}

    def update(self, beyond: set[str], epoch: int) -> None:
        for name in list(self.count):
            if name not in beyond:
                del self.count[name], self.since[name]
        for name in beyond:
            self.count[name] = self.count.get(name, 0) + 1
            self.since.setdefault(name, epoch)


class CollapseAlarm:
    """Counts, per signal, the consecutive checks beyond its threshold; ``observe`` returns the signals
    beyond threshold now and those that reached ``patience`` (the ones that fire)."""

    def __init__(self, section: AlarmSection) -> None:
        self.section = section
        self.streaks = Streaks()

    @property
    def suffix(self) -> str:
        return "_" + self.section.branch

    def beyond(self, metrics: dict[str, float]) -> list[Signal]:
        s, sfx = self.section, self.suffix
        checks = [
            Signal("std_sqrt_d", metrics[f"std_sqrt_d{sfx}"], s.min_std_sqrt_d, below=True),
            Signal("rankme", metrics[f"rankme{sfx}"], s.min_rankme, below=True),
            Signal("uniformity", metrics[f"uniformity{sfx}"], s.max_uniformity, below=False),
        ]
        # NaN (a degenerate batch) counts as beyond: a collapsed network can produce it.
        return [c for c in checks if not (c.value >= c.threshold if c.below else c.value <= c.threshold)]

    def observe(self, metrics: dict[str, float], epoch: int) -> tuple[list[Signal], list[Signal]]:
        if self.section.action == "off":
            return [], []
        now = self.beyond(metrics)
        self.streaks.update({c.metric for c in now}, epoch)
        fired = [c for c in now if self.streaks.count[c.metric] >= self.section.patience]
        return now, fired

    def message(self, fired: list[Signal], epoch: int) -> str:
        branch = self.section.branch
        details = "; ".join(
            f"{c.describe(branch)} for {self.streaks.count[c.metric]} checks in a row (since epoch {self.streaks.since[c.metric]})"
            for c in fired
        )
        return f"collapse alarm at epoch {epoch}: {details}"
