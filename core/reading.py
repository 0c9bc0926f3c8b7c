"""The one place that reads foreign files: encoder exports, checkpoints and weight files that a user hands
cl-run. A missing, damaged or foreign file is a ``UserError`` that names it, on every public entry point
(the ``cl-run`` commands and the Python API: ``load_encoder``, ``clrun.create`` with a ``checkpoint_path``,
evaluation), never the reading library's own exception. Nothing here unpickles: ``.pt``/``.pth`` files are
read with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from clrun.errors import UserError

UNPICKLING = ("it holds Python objects that only unpickling would read, and unpickling a file can run any "
              "code in it, so cl-run does not")


@contextmanager
def reading(path: str | Path, what: str, expected: str) -> Iterator[None]:
    """Within this block, a failure to read ``path`` is one ``UserError``: ``what: path is not a readable
    <expected> (the reader's error)``. ``what`` starts the message (the command, option or component the
    path came from); ``expected`` says what the file should be ("safetensors file", "checkpoint")."""
    try:
        yield
    except UserError:
        raise  # it already names the file
    except FileNotFoundError:
        raise UserError(f"{what}: no file at {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what}: {path} is a folder, not a {expected}") from None
    except pickle.UnpicklingError as exc:  # torch's message is a page long: one sentence says it
        raise UserError(f"{what}: {path} is not a cl-run {expected}: {UNPICKLING}; pass a file that holds only "
                        f"tensors (a state dict or safetensors)") from exc
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{what}: {path} is not a readable {expected} ({type(exc).__name__}: {detail})") from exc


def load_weights(path: str | Path, what: str) -> dict[str, Any]:
    """The tensors of a weight file: ``.safetensors``, else a ``torch.save`` file read without pickle (a
    ``state_dict`` or ``model`` entry holding the tensors is unwrapped, as training scripts save them)."""
    file = Path(path)
    with reading(file, what, "weight file"):
        if file.suffix == ".safetensors":
            import safetensors.torch

            return safetensors.torch.load_file(str(file))
        import torch

        state = torch.load(file, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{what}: {file} holds a {type(state).__name__}, not a state dict of tensors")
    return state
