"""A validated component entry, ready to build."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from clrun.checked import NAME_ATTRIBUTE, building_as
from clrun.component import Component
from clrun.errors import ComponentBuildError, ComponentError, DataError, DataNotFoundError, UserError
from clrun.recipe.types import parameters
from clrun.schedule import Schedule


@dataclass
class ComponentSpec:
    """A component chosen by a recipe with its checked keyword arguments (nested entries unbuilt)."""

    component: Component
    params: dict[str, Any]
    where: str = "<api>"  # file:line:col of the entry, for build errors
    path: str = ""  # dotted recipe path of the entry
    # file:line:col of each setting's value: an override's is on <command line>, so an error in a value
    # set by an override blames the override.
    positions: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def schedules(self) -> dict[str, Schedule]:
        """The settings given as schedules (clrun.schedule): the factory gets their first value, and the
        training loop sets the built component's attribute of that name each step."""
        return {k: v for k, v in self.params.items() if isinstance(v, Schedule)}

    def build(self, **injected: Any) -> Any:
        """Build nested entries, then call the factory with the recipe's settings and the injected values
        the factory declares by name (a projector's ``in_dim``, an optimizer's ``params``...). A nested entry
        of the same kind (a loss that wraps a loss) receives the same injected values: it plays the same role."""
        params, _ = parameters(self.component.factory)
        kwargs = {k: _build(v, self.component.kind, injected) for k, v in self.params.items()}
        # Only to factories that name them: a ``**kwargs`` catch-all (an nn.Module subclass without its
        # own __init__ has one) would otherwise receive values it never asked for.
        kwargs.update({k: v for k, v in injected.items() if k in params})
        try:
            with building_as(self.name):  # a clrun.checked factory names its messages, and its instance
                built = self.component.factory(**kwargs)
        except (DataError, DataNotFoundError):
            raise  # they name the file or folder at fault, and `cl-run check` looks for the latter
        except (ComponentError, ValueError, TypeError, RuntimeError, ArithmeticError, ImportError) as exc:  # a bad value or a missing extra
            raise self.build_error(exc) from exc
        except UserError:
            raise  # it already says what to fix
        except Exception as exc:  # anything else is the plugin's bug: name it, and its maker
            raise ComponentBuildError(
                f"{self.component.kind} {self.name} from {self.component.provider or '?'} ({self.where}) failed "
                f"while being built: {type(exc).__name__}: {exc}"
            ) from exc
        _name(built, self.name)
        return built

    def build_error(self, exc: Exception) -> ComponentError:
        """The factory's complaint, located at the setting it is about when that is known, else at the entry.

        The built-in components say which setting in their ComponentError's ``argument``; a third-party
        factory that raises a plain ValueError or TypeError does not, so its message is searched for the
        one setting it names."""
        argument = self.blamed_argument(exc)
        where, path = self.where, self.path
        if argument is not None:
            where, path = self.positions[argument], f"{self.path}.{argument}" if self.path else argument
        prefix = f"{path}: " if path else ""
        return ComponentError(f"{where}: error: {prefix}{self.component.kind} {self.name!r} could not be built: {exc}",
                              argument=argument)

    def blamed_argument(self, exc: Exception) -> str | None:
        argument = getattr(exc, "argument", None)
        if argument in self.positions:
            return argument
        named = [key for key in self.positions if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", str(exc))]
        return named[0] if len(named) == 1 else None

    def plain(self) -> dict[str, Any]:
        """The entry as it would be written in a recipe (for the resolved recipe in the run folder)."""
        return {"name": self.name, **{k: _plain(v) for k, v in self.params.items()}}


def _name(built: Any, name: str) -> None:
    """Give a built component its registered name (``component.component_name``), for its messages: the
    registry knows it, the component's code need not repeat it. Objects that take no attributes (slots,
    frozen dataclasses, builtins) are left alone, and so is a name the factory set itself."""
    if isinstance(getattr(built, NAME_ATTRIBUTE, None), str):
        return
    try:
        object.__setattr__(built, NAME_ATTRIBUTE, name)
    except (AttributeError, TypeError):
        pass


def _build(value: Any, kind: str, injected: dict[str, Any]) -> Any:
    if isinstance(value, ComponentSpec):
        return value.build(**(injected if value.component.kind == kind else {}))
    if isinstance(value, Schedule):
        return value.initial
    if isinstance(value, list):
        return [_build(v, kind, injected) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, (ComponentSpec, Schedule)):
        return value.plain()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
