"""Contract tests for cl-run components: the built-ins' and your plugin's (as pytest's ``pytester`` is for
pytest plugins).

Every kind of component makes promises the training loop relies on: a loss returns a float32 scalar
under bf16 autocast, keeps its state where checkpoints find it, and says clearly when a recipe gives
it the wrong views; an augmentation draws per image; a data set yields uint8 images... This module
checks them on any registered component, by name, so a plugin runs the same checks as the built-ins:

    # tests/test_contracts.py in your plugin
    import pytest
    from clrun import testing

    @pytest.mark.parametrize("case", testing.cases("mine/*"), ids=str)
    def test_contract(case):
        case.check()                      # or case.check(**settings) for required arguments

``cases`` gives one ``Case`` per (component, contract), so a failure names both; ``case.check(**settings)``
builds the component from ``settings`` as a recipe entry would (``in_dim`` and the like are supplied)
and raises ``ContractError`` (an ``AssertionError``) that says which promise is broken and how to
keep it. ``check_loss(name, **settings)`` and its siblings run every contract of one component at once.

The contracts, per kind (``contracts(kind)``; each function's docstring has the details):

    loss          returns_a_loss, metrics_are_detached, float32_under_autocast, finite_gradients,
                  state_in_state_dict, view_counts, batch_of_one, missing_predictor_or_target,
                  only_what_it_reads
    projector,    output_shape, eval_batch_of_one, gradients
    predictor
    backbone      pooled_features, eval_batch_of_one
    augmentation  keeps_the_batch, random_per_image        (on float (B, 3, IMAGE_SIZE, IMAGE_SIZE))
    mask          shapes_and_dtypes, targets_are_hidden, equal_counts, random_per_image_and_seeded
    dataset       items, deterministic_items, missing_root (the last for factories with a ``root``)

``step_outputs(projections, ...)`` builds the ``clrun.StepOutputs`` a loss is called with, for your
own tests of a loss's formula, from the flat names (``target_projections=...``); ``branch_outputs(online,
target, ...)`` builds it from two ``clrun.Branch`` records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from clrun import components
from clrun.testing import datasets, losses, masks, modules
from clrun.testing.contract import ContractError
from clrun.testing.losses import branch_outputs, step_outputs
from clrun.testing.modules import IMAGE_SIZE

_CONTRACTS: dict[str, dict[str, Callable[..., None]]] = {
    "dataset": datasets.CONTRACTS,
    "augmentation": modules.AUGMENTATION_CONTRACTS,
    "mask": masks.CONTRACTS,
    "backbone": modules.BACKBONE_CONTRACTS,
    "projector": modules.HEAD_CONTRACTS,
    "predictor": modules.HEAD_CONTRACTS,
    "loss": losses.CONTRACTS,
}
_APPLIES: dict[str, dict[str, Callable[[Callable[..., Any]], bool]]] = {"dataset": datasets.APPLIES}

# The kinds with contracts. Optimizers, schedulers and callbacks have none yet.
CHECKED_KINDS: tuple[str, ...] = tuple(_CONTRACTS)


@dataclass(frozen=True)
class Case:
    """One contract of one registered component; ``str(case)`` is ``kind:name:contract`` (a pytest id)."""

    kind: str
    name: str
    contract: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}:{self.contract}"

    def check(self, **settings: Any) -> None:
        """Build the component from ``settings`` and check this contract; raises ``ContractError``."""
        check(self.kind, self.name, self.contract, **settings)


def contracts(kind: str, name: str | None = None) -> list[str]:
    """The contracts of ``kind``; with ``name``, those that apply to that registered component."""
    if kind not in _CONTRACTS:
        raise ValueError(f"no contracts for kind {kind!r}; the kinds with contracts are {', '.join(CHECKED_KINDS)}")
    if name is None:
        return list(_CONTRACTS[kind])
    matches = [c for c in components(kind, name) if c.name == name]
    if not matches:
        raise ValueError(f"no {kind} named {name!r} is registered; list them with `cl-run components {kind}`")
    applies = _APPLIES.get(kind, {})
    return [c for c in _CONTRACTS[kind] if c not in applies or applies[c](matches[0].factory)]


def cases(pattern: str = "*", kind: str | None = None) -> list[Case]:
    """Every (registered component, contract that applies to it) whose name matches the fnmatch ``pattern``,
    of one ``kind`` or of every kind with contracts; made for ``pytest.mark.parametrize(..., ids=str)``."""
    found = []
    for k in CHECKED_KINDS if kind is None else (kind,):
        applies = _APPLIES.get(k, {})
        for component in components(k, pattern):
            found += [
                Case(k, component.name, c)
                for c in contracts(k)
                if c not in applies or applies[c](component.factory)
            ]
    return found


def check(kind: str, name: str, contract: str | None = None, **settings: Any) -> None:
    """Check one ``contract`` (or all that apply) of the registered component ``kind``/``name``, built from
    ``settings``. Each contract runs on a forked, seeded RNG, so it is repeatable and leaves torch's
    global RNG as it found it. Raises ``ContractError`` listing every broken contract."""
    applicable = contracts(kind, name)
    if contract is not None and contract not in applicable:
        raise ValueError(f"{kind} {name!r} has no contract {contract!r}; its contracts are {', '.join(applicable)}")
    failures = []
    for c in applicable if contract is None else [contract]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                _CONTRACTS[kind][c](kind, name, **settings)
            except ContractError as exc:
                failures.append(f"{c}: {exc}")
    if failures:
        raise ContractError(f"{kind} {name!r} breaks its contract: " + "\n  ".join(failures))


def check_loss(name: str, **settings: Any) -> None:
    """Every loss contract on the loss ``name`` built from ``settings`` (``in_dim`` defaults to 16)."""
    check("loss", name, **settings)


def check_projector(name: str, **settings: Any) -> None:
    """Every projector contract on the projector ``name`` built from ``settings``."""
    check("projector", name, **settings)


def check_predictor(name: str, **settings: Any) -> None:
    """Every predictor contract on the predictor ``name`` built from ``settings``."""
    check("predictor", name, **settings)


def check_backbone(name: str, **settings: Any) -> None:
    """Every backbone contract on the backbone ``name`` built from ``settings``."""
    check("backbone", name, **settings)


def check_augmentation(name: str, **settings: Any) -> None:
    """Every augmentation contract on the augmentation ``name`` built from ``settings``."""
    check("augmentation", name, **settings)


def check_dataset(name: str, **settings: Any) -> None:
    """Every data set contract on the data set ``name`` built from ``settings`` (e.g. ``root`` of small files)."""
    check("dataset", name, **settings)


__all__ = [
    "CHECKED_KINDS",
    "IMAGE_SIZE",
    "Case",
    "ContractError",
    "cases",
    "check",
    "check_augmentation",
    "check_backbone",
    "check_dataset",
    "check_loss",
    "check_predictor",
    "check_projector",
    "contracts",
    "branch_outputs",
    "step_outputs",
]
