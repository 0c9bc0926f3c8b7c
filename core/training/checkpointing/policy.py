"""What a resumed run may change: the new resolved recipe against the one the run was trained with.

A resume must not lie: the run folder's recipe describes the training its checkpoints came from, and
export metadata, ``cl-run eval`` and the report read it. So a resume compares the two recipes key by
key. Changes fall in three groups:

* bookkeeping (where the run writes, threads, workers, the progress bar, auto-resume): applied, not recorded;
  also ``init:``, which starts new runs only (a resume continues from the checkpoint; the run folder's
  ``init.json`` keeps what the run started from);
* the run's length and what observes it (epochs, max steps, checkpoint frequency, health checks,
  callbacks, which never change what the encoder learns): applied and recorded;
* everything else changes the training (learning rate, temperature, batch size, data, seed...):
  refused with the list of differences, unless ``--allow-changes``, which applies and records them.

Recorded changes go to the run folder's resumes log with the step they took effect at, and the
folder's recipe becomes the new one; the report lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clrun.errors import UserError

BOOKKEEPING = ("run.", "train.progress", "train.threads", "train.auto_resume", "data.num_workers", "init")
OBSERVING = ("train.epochs", "train.max_steps", "train.checkpoint_every", "train.checkpoint_every_steps", "health.", "callbacks")


@dataclass(frozen=True)
class Change:
    key: str  # dotted, e.g. "loss.temperature"
    was: Any
    now: Any

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    def describe(self) -> str:
        return f"{self.key}: {self.was!r} -> {self.now!r}"


def changes(saved: Any, new: Any, key: str = "") -> list[Change]:
    """Every difference, at the deepest key where both sides are still mappings (or lists of mappings
    of one length: views, callbacks): ``loss.temperature: 0.2 -> 0.1``, ``scheduler: None -> {...}``."""
    if isinstance(saved, dict) and isinstance(new, dict):
        return [c for k in sorted(saved.keys() | new.keys())
                for c in changes(saved.get(k), new.get(k), f"{key}.{k}" if key else k)]
    if (isinstance(saved, list) and isinstance(new, list) and len(saved) == len(new)
            and all(isinstance(v, dict) for v in saved + new)):
        return [c for i, (a, b) in enumerate(zip(saved, new)) for c in changes(a, b, f"{key}.{i}")]
    return [] if saved == new else [Change(key, saved, new)]


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def recorded(found: list[Change]) -> list[Change]:
    """The changes worth recording: all but bookkeeping."""
    return [c for c in found if not _matches(c.key, BOOKKEEPING)]


def training_changes(found: list[Change]) -> list[Change]:
    """The changes that alter what the encoder learns."""
    return [c for c in recorded(found) if not _matches(c.key, OBSERVING)]


def check_allowed(found: list[Change], allow: bool, source: str) -> None:
    """Refuse training changes unless ``allow``, naming every one of them."""
    refused = training_changes(found)
    if refused and not allow:
        listed = "\n".join(f"  {c.describe()}" for c in refused)
        raise UserError(
            f"--resume: {source}: the recipe differs from the one the run was trained with in "
            f"{len(refused)} setting(s) that change the training:\n{listed}\n"
            f"resume with the run's own recipe, or pass --allow-changes to apply them from the checkpoint's step on "
            f"(they are recorded in the run folder and its report)"
        )
