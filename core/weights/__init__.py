"""Initial weights for a run (the recipe's ``init:`` section): released encoders, official training
checkpoints and earlier cl-run runs, read without running code and loaded part by part with a report.

``files`` finds and reads a source; ``layout`` is the protocol of a file family (``weights_layout``
components: ``own_layouts`` are cl-run's and timm's, plugins add the official repositories'); ``loading``
fits one part's tensors to its module; ``plan`` carries out the whole section.
"""

from clrun.weights.layout import PARTS, Trained, WeightsFile, WeightsLayout

__all__ = ["PARTS", "Trained", "WeightsFile", "WeightsLayout"]
