"""Representation health: the metrics, the monitor that measures them during training, the collapse alarm."""

from clrun.health.metrics import alignment, health_metrics, pair_cosines, rankme, std_sqrt_d, uniformity

__all__ = ["alignment", "uniformity", "std_sqrt_d", "rankme", "pair_cosines", "health_metrics"]
