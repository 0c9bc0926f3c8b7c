"""Recipe problems: collected during validation and reported all at once."""

from __future__ import annotations

from dataclasses import dataclass

from clrun.errors import UserError


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    col: int
    path: str  # dotted path in the recipe, e.g. "train.epochs"
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: error: {where}{self.message}"


class RecipeError(UserError):
    """One or more problems in a recipe; ``str()`` lists them, one per line, in file order."""

    def __init__(self, problems: list[Problem]):
        # Files first, then sources such as <command line>, in position order.
        self.problems = sorted(problems, key=lambda p: (p.file.startswith("<"), p.file, p.line, p.col))
        super().__init__("\n".join(str(p) for p in self.problems))
