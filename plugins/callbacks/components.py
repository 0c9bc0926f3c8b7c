"""Offers the built-in callbacks."""

from clrun import Component, hookimpl
from clrun.plugins.callbacks.knn import KNNEvaluation


@hookimpl
def clrun_components():
    return [Component("callback", "clrun/knn", KNNEvaluation, "weighted kNN top-1 of backbone and projector features")]
