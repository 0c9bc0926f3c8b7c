"""What the evaluation callbacks share: when they evaluate during a run, and how they report at its end."""

from __future__ import annotations

from clrun import Run


class Evaluator:
    """Base of the evaluators: ``evaluate(run) -> {name: accuracy}`` every ``every`` epochs (0: never)
    except the last, and at the end of the run, where ``describe`` gives the printed line. ``cl-run eval``
    calls ``evaluate`` directly."""

    every: int = 0

    def evaluate(self, run: Run) -> dict[str, float]:
        raise NotImplementedError

    def describe(self, results: dict[str, float]) -> str:
        raise NotImplementedError

    def clrun_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        if self.every and epoch % self.every == 0 and epoch < run.recipe.train.epochs:
            metrics.update(self.evaluate(run))

    def clrun_run_end(self, run: Run, metrics: dict[str, float]) -> None:
        results = self.evaluate(run)
        metrics.update(results)
        print(self.describe(results), flush=True)
