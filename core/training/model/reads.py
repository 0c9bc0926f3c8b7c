"""What a step's readers read: the ``reads`` a loss (or a callback with ``clrun_step_outputs``) declares,
checked against the recipe when the run is built, and the optional outputs the networks compute for them.

A reader declares a class attribute ``reads = frozenset({"target.projections", "online.token_projections"})``
naming the ``clrun.StepOutputs`` parts it reads: ``"views"``, ``"masks"``, ``"online.<output>"`` (any
``clrun.Branch`` output) and ``"target.<output>"`` (what the target network makes: projections, tokens,
token projections). ``is_global``, ``step`` and ``total_steps`` are always there.

Two uses of one declaration:

* the build refuses a recipe that does not produce what its loss (or callback) reads, at that entry's
  recipe line: ``cl-run check`` says it before any step, in one message style;
* the networks compute an output that costs extra passes (the projector over every patch token, the
  target's tokens) only when the loss reads it. A loss without ``reads`` gets everything the recipe can
  produce, as before declarations existed. Callbacks observe: what they read is checked, but never makes
  the networks compute more, since an extra pass through a head with BatchNorm would move its running
  statistics and a callback must not change what the run trains (an online probe's run is bit-identical
  to the same run without it).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Iterable, Optional

from clrun.errors import ComponentError, ComponentErrors
from clrun.recipe.schema import Recipe
from clrun.recipe.spec import ComponentSpec
from clrun.training.model.branch import Branch
from clrun.training.model.needs import NEEDS

# What the momentum target network makes (a copy of backbone + projector: no predictor, no token head).
TARGET_OUTPUTS = ("projections", "tokens", "token_projections", "snapshot_tokens")
# The outputs that cost extra passes, made only when the loss reads them (clrun.training.model.network, .target);
# every other output the recipe can produce is always made.
OPTIONAL = frozenset({"online.token_projections", "target.tokens", "target.token_projections", "target.snapshot_tokens"})


# What only the target network makes (its snapshot's tokens): not an online output.
TARGET_ONLY = ("snapshot_tokens",)


def vocabulary() -> tuple[str, ...]:
    """Every name a ``reads`` declaration may hold, read from ``Branch``'s outputs (so a new one joins)."""
    return ("views", "masks", *(f"online.{n}" for n in Branch.outputs() if n not in TARGET_ONLY),
            *(f"target.{n}" for n in TARGET_OUTPUTS if n in Branch.outputs()))


def producible(recipe: Recipe) -> frozenset[str]:
    """The outputs ``recipe`` can produce."""
    return frozenset(r for r in vocabulary() if all(n.met(recipe) for n in NEEDS.get(r, ())))


def declared(reader: Any) -> Optional[frozenset[str]]:
    """A loss's (or callback's) ``reads``, as a frozenset; None when it declares none (it reads anything)."""
    reads = getattr(reader, "reads", None)
    return None if reads is None else frozenset(reads)


def callback_reads(spec: ComponentSpec) -> Optional[frozenset[str]]:
    """What a recipe callback reads of the step's outputs, from its factory, before it is built: nothing
    when its class has no ``clrun_step_outputs`` hook, its class attribute ``reads`` when declared, else
    everything (None; also for a factory that is a function: what it returns is unknown until built)."""
    factory = spec.component.factory
    if inspect.isclass(factory) and not hasattr(factory, "clrun_step_outputs"):
        return frozenset()
    return declared(factory)


def check(spec: ComponentSpec, reads: Optional[frozenset[str]], recipe: Recipe) -> None:
    """Raise a ``ComponentError`` at ``spec``'s recipe line when it reads what no output is, or what
    ``recipe`` does not produce; the message names every missing read and the section that brings it."""
    if reads is None:
        return
    label = spec.name if spec.path == spec.component.kind else f"{spec.component.kind} {spec.name}"
    where = f"{spec.where}: error: {spec.path + ': ' if spec.path else ''}{label}"
    unknown = sorted(r for r in reads if r not in vocabulary())
    if unknown:
        raise ComponentError(f"{where} reads {_listed(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
                             f"a step output; `reads` names some of: {', '.join(vocabulary())}")
    missing = sorted(r for r in reads - producible(recipe))
    if not missing:
        return
    needs = list(dict.fromkeys(n for r in missing for n in NEEDS[r] if not n.met(recipe)))
    raise ComponentError(f"{where} reads {_listed(missing)}, which this recipe does not produce: add "
                         f"{_listed([n.what for n in needs])}")


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def step_reads(recipe: Recipe, loss_fn: Any, callbacks: Iterable[ComponentSpec] = ()) -> frozenset[str]:
    """Check what the loss and ``callbacks`` (recipe entries) read against ``recipe``, and return what the
    loss reads among what ``recipe`` produces (everything it produces when the loss declares nothing): the
    step makes those, and the outputs outside ``OPTIONAL``. A callback reading an optional output the loss
    does not read is refused: the step does not make it.
    Raises a ``ComponentError`` per reader that needs more (all at once)."""
    errors = []
    loss_reads = declared(loss_fn)
    try:
        check(recipe.loss, loss_reads, recipe)
    except ComponentError as exc:
        errors.append(exc)
    can = producible(recipe)
    wanted = can if loss_reads is None else can & loss_reads
    for spec in callbacks:
        try:
            reads = callback_reads(spec)
            check(spec, reads, recipe)
            _check_computed(spec, reads, wanted | (can - OPTIONAL))
        except ComponentError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ComponentErrors(errors)
    return wanted


def _check_computed(spec: ComponentSpec, reads: Optional[frozenset[str]], computed: frozenset[str]) -> None:
    """A callback's reads must be among what the step computes for the loss."""
    extra = sorted((reads or frozenset()) - computed)
    if extra:
        raise ComponentError(f"{spec.where}: error: {spec.path + ': ' if spec.path else ''}{spec.name} reads "
                             f"{_listed(extra)}, which this recipe's loss does not read: the step computes only "
                             f"what the loss reads, so that a callback never changes what the run trains")


@functools.cache  # asked at every step with the run's one set of reads: worked out once
def branch_wants(reads: frozenset[str], role: str) -> frozenset[str]:
    """The outputs of one branch (``role``: online, target) among ``reads``, without the prefix."""
    prefix = role + "."
    return frozenset(r[len(prefix):] for r in reads if r.startswith(prefix))
