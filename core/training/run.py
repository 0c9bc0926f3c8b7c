"""The live run that callbacks see."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from clrun.recipe.schema import Recipe
from clrun.run_folder import RunFolder
from clrun.training import embedding
from clrun.training.embedding import Embedded
from clrun.training.parts import Parts
from clrun.training.model.network import OnlineNetwork
from clrun.training.model.views import to_float


@dataclass
class Run:
    """State of a training run: what it trains, where it writes, how far it got.

    Callbacks receive it in every hook. Public (the callback contract, see ``clrun.callback``):
    ``recipe``, ``folder`` / ``directory``, ``device``, ``steps_per_epoch``, ``epoch``, ``step``,
    ``summary``, ``network``, ``encoder`` (the product: the backbone), ``feature_dim``,
    ``projection_dim``, ``preprocess`` and ``features`` (to embed a labeled data set for evaluation),
    ``add_step_metric`` (a value a callback computed during a step, reported with the step's metrics).
    ``parts``, ``step_metrics`` and the underscored fields are internal.
    """

    recipe: Recipe
    parts: Parts
    device: torch.device
    folder: RunFolder | None  # None where nothing is written (`cl-run check`, tests); a path is wrapped
    steps_per_epoch: int
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    summary: dict[str, Any] = field(default_factory=dict)
    # Set by a callback (the collapse alarm) to skip checkpoint writes while the state looks unhealthy.
    checkpoint_hold: str | None = None
    checkpoint_epoch: int | None = None  # the epoch of the checkpoint on disk, if any
    # A sharded run's whole network, gathered around the hooks that need whole weights (internal).
    whole: OnlineNetwork | None = field(default=None, repr=False)
    # Features of the data sets embedded at the current step: the kNN and linear-probe evaluators at the
    # end of a run usually embed the same train and test sets, and embedding 60k images takes a minute.
    _feature_cache: dict = field(default_factory=dict, repr=False)
    # What callbacks added to the current step's metrics (add_step_metric); the loop collects it.
    step_metrics: dict[str, Tensor] = field(default_factory=dict, repr=False)
    # Files a callback made, by RunFolder property name, for the caller to write (None: written at once).
    # `cl-run eval` collects them so that they go where its evaluation goes, under its error handling.
    deferred_files: dict[str, bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.folder is not None and not isinstance(self.folder, RunFolder):
            self.folder = RunFolder(self.folder)

    @property
    def directory(self) -> Path | None:
        """The run folder's path (None where nothing is written)."""
        return None if self.folder is None else self.folder.path

    def add_step_metric(self, name: str, value: Tensor | float) -> None:
        """Report ``value`` (a scalar; a tensor may stay on the device) as metric ``name`` of the step that just
        ran, from ``clrun_step_outputs``: it is read with the step's own metrics, every ``train.log_every``
        steps, without a host read of its own, and arrives in that step's ``clrun_step_end`` metrics, in
        the run folder's metrics file and in the epoch's mean."""
        self.step_metrics[name] = torch.as_tensor(value, dtype=torch.float32).detach()

    @property
    def network(self) -> OnlineNetwork:
        """The online network: ``backbone``, ``projector`` and ``predictor`` (None without one). In a sharded
        run (``train.strategy: fsdp``), a whole copy gathered for the epoch-end and run-end hooks."""
        return self.whole if self.whole is not None else self.parts.network

    @property
    def encoder(self) -> torch.nn.Module:
        return self.network.backbone

    @property
    def feature_dim(self) -> int:
        """The backbone's output width."""
        return self.parts.feature_dim

    @property
    def projection_dim(self) -> int:
        """The projector's output width."""
        return self.parts.projection_dim

    def preprocess(self, images: Tensor) -> Tensor:
        """A batch as the encoder sees it at evaluation: on the run's device, float, resized to the
        global views' size when it differs, normalized as in training; no augmentation."""
        x = to_float(images.to(self.device, non_blocking=True))
        if tuple(x.shape[-2:]) != tuple(self.parts.eval_size):
            x = F.interpolate(x, size=self.parts.eval_size, mode="bilinear", antialias=True, align_corners=False)
        x = self.parts.views.normalize(x)
        if self.parts.views.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def features(self, dataset: Dataset, batch_size: int = 512, *, projector: bool | str | None = None,
                 dtype: str | torch.dtype | None = None) -> Embedded:
        """(backbone features, projector outputs, labels) of a whole data set, in eval mode, on the CPU
        (``clrun.training.embedding.Embedded``, a 3-tuple).

        ``projector``: whether to embed the projector too; None (or "auto") does so only when it is narrow
        (``projection_dim <= NARROW_PROJECTOR``, 2048), and the projections are None otherwise.
        ``dtype``: what the features are kept in ("fp32", "bf16", "fp16"); None (or "auto"): fp32 for a run
        on the CPU, bf16 on an accelerator, where the forward runs under autocast. Upcast what you compute
        with (``.float()``): NumPy has no bf16.

        Images get no augmentation (see ``preprocess``). Cached for the current step: a data set that
        another evaluator already embedded at this step (the same class, length and sample of images and
        labels, with the same choices) is not embedded again.
        """
        with_projector = embedding.wants_projector(projector, self.projection_dim)
        kept_in = embedding.storage_dtype(self.device, dtype)
        key = (self.step, batch_size, dataset_fingerprint(dataset), with_projector, kept_in)
        if key not in self._feature_cache:
            if any(k[0] != self.step for k in self._feature_cache):
                self._feature_cache.clear()  # the network changed: older features are stale
            self._feature_cache[key] = embedding.embed(
                self.network, self.preprocess, dataset, device=self.device, batch_size=batch_size,
                num_workers=self.recipe.data.num_workers, projector=with_projector, dtype=kept_in)
        return self._feature_cache[key]


def dataset_fingerprint(dataset: Dataset) -> tuple:
    """Identifies a data set's contents cheaply: its class, length, and a hash of a few items."""
    n = len(dataset)
    if n == 0:
        return type(dataset).__qualname__, 0, ()
    sample = []
    for i in sorted({0, n // 3, n // 2, (2 * n) // 3, n - 1}):
        image, label = dataset[i][:2]  # a letterboxing data set adds each image's place
        label = torch.as_tensor(label)  # a class, or a segmentation data set's label map
        sample.append((hash(torch.as_tensor(image).numpy().tobytes()),
                       int(label) if label.numel() == 1 else hash(label.numpy().tobytes())))
    return type(dataset).__qualname__, n, tuple(sample)
