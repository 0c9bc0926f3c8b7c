"""What every contract module shares: the failure type and the small checks they are written with."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clrun import UserError


class ContractError(AssertionError):
    """A component breaks one of cl-run's component contracts; the message says which rule and how."""


def require(condition: bool, message: str) -> None:
    """Fail the contract with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ContractError(message)


def finite(t: Tensor) -> bool:
    """Whether every element of ``t`` is finite."""
    return bool(torch.isfinite(t.detach()).all())


def clear_error_or_result(name: str, call: Any, mentions: str, situation: str) -> Any:
    """Run ``call()``; it may succeed (its result is returned) or raise a ``clrun.UserError`` whose message
    starts with the component's ``name`` and mentions ``mentions``. Anything else breaks the contract:
    a raw IndexError or RuntimeError from deep inside does not tell a user what to change in the recipe.
    Returns None when the call raised the clear error.
    """
    try:
        return call()
    except UserError as exc:
        message = str(exc)
        require(
            message.startswith(name) and mentions in message.lower(),
            f"{situation}: the error should start with {name!r} and mention {mentions!r}; it says {message!r}",
        )
        return None
    except Exception as exc:
        raise ContractError(
            f"{situation}: raised {type(exc).__name__}: {exc}. Raise clrun.UserError (or clrun.ComponentError) "
            f"with a message that starts with {name!r} and says what the recipe must change"
        ) from exc
