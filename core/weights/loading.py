"""Load one part's tensors into its module and say what happened: what loaded, what is missing or left
over, what did not fit, what was resampled. Strict by default: anything but a complete, exact match stops
the run before it starts, with the list."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from clrun.encoder_file import is_pretext
from clrun.errors import UserError

SHOWN = 6  # names listed per kind of problem in a message; the run folder's record keeps them all


@dataclass
class PartReport:
    """What ``init:`` did for one part: in ``cl-run check``'s plan, the run folder's record and the report."""

    part: str
    source: str
    layout: str
    network: str
    sha256: str = ""
    revision: str | None = None
    loaded: int = 0  # tensors loaded
    missing: list[str] = field(default_factory=list)  # the module's, not in the file: left at initialization
    unexpected: list[str] = field(default_factory=list)  # the file's, not in the module: not used
    mismatched: list[str] = field(default_factory=list)  # "name: file (a, b) vs module (c, d)"
    resized: list[str] = field(default_factory=list)  # "name: (a, b) -> (c, d)" by the backbone's rules
    pretext: list[str] = field(default_factory=list)  # pre-training-only tensors left at initialization
    pending: str | None = None  # why nothing was loaded yet (a Hub download at training)

    def problems(self) -> list[str]:
        """Each kind of mismatch in one line (at most ``SHOWN`` names each)."""
        lines = []
        for what, names in (("missing from the file (left at initialization)", self.missing),
                            ("in the file but not in the model (unused)", self.unexpected),
                            ("of another shape", self.mismatched)):
            if names:
                shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")
                lines.append(f"{len(names)} {what}: {shown}")
        return lines

    def summary(self) -> str:
        """One line: where the part's weights come from and how they fit."""
        if self.pending:
            return f"{self.part} <- {self.source}: {self.pending}"
        origin = f"{self.source} ({self.layout}, {self.network})"
        notes = [f"{self.loaded} tensors"]
        notes += [f"{len(self.resized)} resampled ({'; '.join(self.resized[:2])})"] if self.resized else []
        notes += [f"{len(self.pretext)} pre-training-only left at initialization"] if self.pretext else []
        notes += self.problems()
        return f"{self.part} <- {origin}: " + "; ".join(notes)

    def record(self) -> dict[str, Any]:
        """The report as the run folder keeps it (JSON)."""
        return dict(self.__dict__)


def adapt(module: nn.Module, part: str, state: dict[str, Tensor], report: PartReport) -> dict[str, Tensor]:
    """The backbone's own conversion of foreign names and shapes (``adapt_state_dict``, e.g. timm's checkpoint
    filter: register tokens, position embeddings resampled to the recipe's image size); other parts as given."""
    convert = getattr(module, "adapt_state_dict", None) if part == "backbone" else None
    if convert is None:
        return state
    adapted = convert(dict(state))
    report.resized = [f"{key}: {tuple(state[key].shape)} -> {tuple(value.shape)}" for key, value in adapted.items()
                      if key in state and tuple(state[key].shape) != tuple(value.shape)]
    return adapted


def load_part(module: nn.Module, state: dict[str, Tensor], report: PartReport, strict: bool, key: str,
              apply: bool = True) -> None:
    """Compare ``state`` with ``module``'s tensors, fill ``report``, and load what fits (``apply``). With
    ``strict``, any missing, unused or misshapen tensor is a ``UserError`` listing them, before anything is
    loaded; ``key`` (``init.backbone``) starts the messages. Pre-training-only tensors (``pretext_*``, e.g. a mask token) may be absent from a file."""
    own = module.state_dict()
    report.pretext = sorted(k for k in own if k not in state and is_pretext(k))
    report.missing = sorted(k for k in own if k not in state and not is_pretext(k))
    report.unexpected = sorted(k for k in state if k not in own)
    report.mismatched = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                               if k in own and tuple(v.shape) != tuple(own[k].shape))
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    report.loaded = len(fitting)
    if not fitting:
        raise UserError(f"{key}: no tensor of {report.source} fits the recipe's {report.part} "
                        f"({'; '.join(report.problems())}); is it a file of this part, and does the recipe build the "
                        f"model it was trained as?")
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise UserError(f"{key}: {report.source} does not fit the recipe's {report.part}: "
                        + "; ".join(report.problems())
                        + f"; check that the recipe builds the model the weights were trained as (name, patch size, "
                          f"width, depth, register tokens), or set {key}.strict=false to load the {report.loaded} "
                          f"tensors that fit")
    if apply:
        module.load_state_dict(fitting, strict=False)
