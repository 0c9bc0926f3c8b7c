"""Reading a recipe file's text: a size limit, and bytes that are not UTF-8 reported at their line and column."""

from __future__ import annotations

from clrun.recipe.limits import MAX_RECIPE_BYTES
from clrun.recipe.problems import Problem, RecipeError


def read_recipe_text(path: str) -> str:
    """The file's text; raise RecipeError if it cannot be read, is over MAX_RECIPE_BYTES or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)  # never more: the path may name a device or a huge file
    except OSError as exc:
        raise RecipeError([Problem(path, 1, 1, "", f"cannot read recipe: {exc.strerror or exc}")]) from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError([Problem(path, 1, 1, "", f"file is larger than {MAX_RECIPE_BYTES // 1024} KiB, the limit "
                                   "for a recipe; is this the right file?")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = byte_position(data, exc.start)
        raise RecipeError([Problem(path, line, col, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                                   "save the recipe as UTF-8")]) from None


def byte_position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of byte ``offset``, the column counted in characters like YAML's marks."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    col = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, col
