"""One network's outputs for the views it saw: ``clrun.Branch``.

A step has two branches, the online network's and the momentum target's (``clrun.StepOutputs.online`` and
``.target``). Each output is one list, in view order (the target's: in global-view order). An output the
step did not produce is *absent*, not None: reading it raises ``MissingOutput``, an error that says what
the recipe needs for it. Adding a per-view output is one annotated line below and the module that fills it:
the step's record, the reads a loss may declare (``"online.<name>"``) and what the network computes follow
from these annotations.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

from torch import Tensor

from clrun.errors import ComponentError
from clrun.tokens import Tokens
from clrun.training.model.needs import requirement


class MissingOutput(ComponentError, AttributeError):
    """A loss or callback read an output this step does not hold: the recipe does not produce it, or the
    loss does not declare it in ``reads``. An ``AttributeError`` too, so ``getattr(branch, name, None)`` and
    ``hasattr`` treat an absent output as absent."""


class Branch:
    """One network's outputs, per view (the target's: per global view, in global-view order); row ``n``
    of every tensor comes from image ``n`` of the batch.

    features:          backbone features, each ``(B, F)``
    projections:       projector outputs, each ``(B, D)``
    predictions:       predictor outputs, each ``(B, D')`` (a recipe with a ``predictor:``)
    tokens:            the backbone's ``clrun.Tokens`` of each view that went through ``forward_tokens``
                       (online: the masked views, None for the others; target: every global view, whole)
    token_projections: the projector applied to every patch token of ``tokens``, ``(B, N, D)``
                       (None for views without tokens)
    token_predictions: the token head's predictions for each target set's patches, ``(B, M, T, D)``
                       (``clrun.Masks.at_targets`` gives what they predict); None for views without a mask
    snapshot_tokens:   target only (a ``target.snapshot:`` section): the ``clrun.Tokens`` of every global
                       view, whole, from the target's snapshot, an earlier frozen copy of its backbone (on
                       the view resized by ``snapshot.scale``: its grid may be finer than ``tokens``')

    ``Branch(projections=[...], predictions=[...])`` builds one; an output given as None is absent.
    ``name in branch`` says whether it holds an output, ``branch.get(name)`` returns it or None.
    """

    features: list[Tensor]
    projections: list[Tensor]
    predictions: list[Tensor]
    tokens: list[Optional[Tokens]]
    token_projections: list[Optional[Tensor]]
    token_predictions: list[Optional[Tensor]]
    snapshot_tokens: list[Tokens]

    def __init__(self, **outputs: Any) -> None:
        object.__setattr__(self, "_role", "")  # "online" or "target", set by the StepOutputs that holds it
        for name, value in outputs.items():
            setattr(self, name, value)

    @classmethod
    def outputs(cls) -> tuple[str, ...]:
        """The outputs a branch can hold: the class's annotations (a subclass's included), in order."""
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            names.update((n, None) for n in vars(klass).get("__annotations__", {}) if not n.startswith("_"))
        return tuple(names)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.outputs():
            raise TypeError(f"a Branch has no output {name!r}; its outputs are {', '.join(self.outputs())}")
        if value is None:
            self.__dict__.pop(name, None)  # None means absent: the output is not there
        else:
            self.__dict__[name] = list(value)

    def __getattr__(self, name: str) -> Any:  # called only for what the instance does not hold
        if name.startswith("_") or name not in self.outputs():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise MissingOutput(absent_message(f"{self._role}.{name}" if self._role else name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.__dict__ and name in self.outputs()

    def get(self, name: str, default: Any = None) -> Any:
        """The output ``name``, or ``default`` when the branch does not hold it."""
        return self.__dict__.get(name, default) if name in self.outputs() else default

    def items(self) -> Iterator[tuple[str, list]]:
        """``(name, output)`` of every output the branch holds, in declaration order."""
        return ((n, self.__dict__[n]) for n in self.outputs() if n in self.__dict__)

    def map(self, fn: Callable[[list], Any]) -> "Branch":
        """A branch of the same role with ``fn(output)`` for every output this one holds (detach, cast...)."""
        other = type(self)(**{n: fn(v) for n, v in self.items()})
        object.__setattr__(other, "_role", self._role)
        return other

    def __repr__(self) -> str:
        held = ", ".join(f"{n}=[{len(v)} views]" for n, v in self.items())
        return f"{type(self).__name__}({self._role + ': ' if self._role else ''}{held})"


def absent_message(read: str) -> str:
    """Why ``read`` (``"target.projections"``) is not in a step's outputs, and what brings it."""
    return (f"{read} is not among this step's outputs: the recipe does not produce it ({read} needs "
            f"{requirement(read)}), or the loss does not declare that it reads it (a class attribute "
            f"`reads = frozenset({{{read!r}, ...}})`)")
