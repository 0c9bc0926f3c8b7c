"""Errors a user can fix. The CLI prints their message (no traceback) and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Something in the user's input (recipe, data, command line) is wrong; the message says how to fix it."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A data set's files are missing.

    ``expected_shape`` is the (C, H, W) the data set would yield when the factory knows it without the
    files; ``cl-run check`` then goes on with a synthetic batch of that shape.
    """

    def __init__(self, message: str, expected_shape: tuple[int, int, int] | None = None):
        super().__init__(message)
        self.expected_shape = expected_shape


class DataError(UserError):
    """A data file exists but cannot be used (corrupt, wrong format, wrong size); the message names it."""


class ComponentError(UserError, ValueError):
    """A component could not be found, built or used as configured (unknown name, bad arguments,
    duplicate name, a loss given views it cannot compare). Also a ValueError, as bad values are.

    ``argument``: the factory argument at fault when one is (``clrun.loss_kit``'s argument checks set
    it), so that a recipe error can point at that key rather than at the whole entry."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class ComponentErrors(ComponentError):
    """Several components of one recipe could not be built: each error on its own line, in file order,
    so a user fixes them all in one round."""

    def __init__(self, errors: list[ComponentError]) -> None:
        # Recipe-file positions first, then <command line> ones, as recipe problems are listed.
        self.errors = sorted(errors, key=lambda e: _position(str(e)))
        super().__init__("\n".join(str(e) for e in self.errors))


def _position(message: str) -> tuple:
    file, _, rest = message.partition(":")
    line, _, rest = rest.partition(":")
    col = rest.partition(":")[0]
    return (file.startswith("<"), file, int(line) if line.isdigit() else 0, int(col) if col.isdigit() else 0)


class ComponentBuildError(UserError):
    """A plugin's component raised an unexpected exception while it was being built from its recipe entry
    (a bug in its factory, or a setting it did not foresee). Nothing ran yet, so it is bad input, as a
    plugin that fails to load is: the CLI exits with code 2. The message names the component, its plugin
    and recipe line and the original error; ``__cause__`` holds that error (``-v`` shows its traceback)."""


class PluginLoadError(UserError):
    """A plugin failed to load while strict loading was requested."""


class TrainingHalted(RuntimeError):
    """A callback stopped the run on purpose (e.g. the collapse alarm); the message says why and which
    checkpoint is kept. The CLI prints it and exits with code 1."""


class ComponentFailure(RuntimeError):
    """A plugin's component raised while the run used it (a callback's hook, a data set's item in a
    loader worker). The message names the component, its plugin and recipe line and the original
    error; ``__cause__`` holds that error. The CLI prints the message (the traceback with ``-v``) and
    exits with code 1."""
