"""Online linear evaluation: linear classifiers trained on the encoder's detached features while it
pre-trains (the monitor of solo-learn; Chen et al. 2020 and Caron et al. 2021 report it too)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from clrun import ComponentError, Nested, Range, Run, StepOutputs, UserError, checked
from clrun.callback import Evaluator
from clrun.plugins.callbacks.class_lists import class_names

NAME = "clrun/online_probe"
HEADS = ("backbone", "projector")


def linear_head(in_dim: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    """``BatchNorm1d(affine=False)`` + ``Linear``, the Linear initialized like PyTorch's default
    (uniform in +-1/sqrt(in_dim)) but from ``generator``: building it never draws from the global RNG."""
    norm = nn.BatchNorm1d(in_dim, affine=False)
    linear = nn.utils.skip_init(nn.Linear, in_dim, num_classes)  # no draw from the global generator
    bound = 1 / math.sqrt(in_dim)
    with torch.no_grad():
        linear.weight.copy_(torch.rand(linear.weight.shape, generator=generator) * 2 * bound - bound)
        linear.bias.copy_(torch.rand(linear.bias.shape, generator=generator) * 2 * bound - bound)
    return nn.Sequential(norm, linear)


def dataset_labels(dataset: Dataset) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


@checked
class OnlineProbe(Evaluator):
    """Linear classifiers trained during pre-training on the *detached* outputs of the global views:
    one on the backbone's features, one on the projector's outputs, side by side. Each is
    ``BatchNorm1d(affine=False)`` + ``Linear`` (the normalization follows the features' scale as it
    drifts while the encoder trains) with its own AdamW optimizer; the encoder's gradients, optimizer
    and random streams are untouched, so adding the probe never changes what the run trains.

    Reports ``online_train_top1`` / ``online_train_top1_projector`` (each step's accuracy on its own
    batch, before the probe's update; the epoch record holds their means) and, with a ``test`` set,
    ``online_top1`` / ``online_top1_projector`` (the heads in eval mode on the test set, without
    augmentation) every ``every`` epochs and at the end; ``online_top1_projector`` where the projector's
    outputs of the test set are embedded (``projector``). The heads and their optimizer state are saved
    in each checkpoint, so a resumed run ends with the same probe as an uninterrupted one.

    Needs a labeled training set (``data.dataset``); labels -1 (unlabeled) stop the run.

    num_classes:  classes of the training labels; when left out, inferred from the ``test`` set's labels
                  (largest label + 1), so one of the two is required
    test:         labeled data set to measure the heads on (e.g. the official test split); optional
    every:        also evaluate on ``test`` every this many epochs (0: only at the end of the run)
    lr:           AdamW learning rate of the heads
    weight_decay: AdamW weight decay of the heads
    seed:         seed of the heads' initialization (a private generator); default: the recipe's seed
    batch_size:   batch size for embedding the test set
    projector:    also measure the projector's head on the test set: auto (where the projector is at most
                  2048 wide: its outputs of the test set are kept in memory), true or false; the head
                  trains in any case
    features_dtype: what the test set's embedded features are kept in: auto (fp32 on the CPU, bf16 on an
                  accelerator), fp32, bf16 or fp16
    """

    # What it reads of each step's outputs: an observer's declaration, which never makes the step compute
    # more (clrun.StepOutputs; without it, the build could not check a recipe for it).
    reads = frozenset({"online.features", "online.projections"})

    def __init__(
        self,
        num_classes: Optional[Annotated[int, Range(min=2)]] = None,
        test: Optional[Annotated[Dataset, Nested("dataset")]] = None,
        every: Annotated[int, Range(min=0, hint="0: only at the end of the run")] = 0,
        lr: Annotated[float, Range(min=0, exclusive_min=True)] = 1e-3,
        weight_decay: Annotated[float, Range(min=0)] = 0.0,
        seed: Optional[int] = None,
        batch_size: Annotated[int, Range(min=1)] = 512,
        projector: Literal["auto", True, False] = "auto",
        features_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    ) -> None:
        if num_classes is None and test is None:
            raise ComponentError(f"{NAME}: set num_classes (the number of classes of the training labels), or "
                                 f"give a labeled `test` data set to infer it from")
        named = class_names(test) if test is not None else None
        if num_classes is not None and named is not None and len(named) != num_classes:
            # The heads' outputs are the training labels; a test set with another class list is scored wrongly.
            raise ComponentError(f"{NAME}: num_classes={num_classes} but the test data set names {len(named)} classes; "
                                 f"the training and test labels must share one class list: set num_classes to "
                                 f"{len(named)} if the training data has those classes, or use a test set of the "
                                 f"training classes")
        self.num_classes, self.test, self.every = num_classes, test, every
        self.lr, self.weight_decay, self.seed, self.batch_size = lr, weight_decay, seed, batch_size
        self.projector, self.features_dtype = projector, features_dtype
        self.heads: nn.ModuleDict | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's state, loaded once the heads exist

    # -- the heads -------------------------------------------------------------------------------
    def _classes(self) -> int:
        if self.num_classes is None:
            labels = dataset_labels(self.test)
            if len(labels) == 0 or (labels < 0).any():
                raise UserError(f"{NAME}: cannot infer num_classes from the `test` data set: it is empty or "
                                f"unlabeled (label -1); set num_classes, and give a labeled test set")
            self.num_classes = int(labels.max()) + 1
        return self.num_classes

    def _build(self, run: Run) -> None:
        classes = self._classes()
        seed = run.recipe.seed if self.seed is None else self.seed
        generator = torch.Generator().manual_seed(seed)
        dims = {"backbone": run.feature_dim, "projector": run.projection_dim}
        self.heads = nn.ModuleDict({k: linear_head(dims[k], classes, generator) for k in HEADS}).to(run.device)
        self.optimizer = torch.optim.AdamW(self.heads.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self._pending is not None:
            state, self._pending = self._pending, None
            try:
                self.heads.load_state_dict(state["heads"])
            except RuntimeError as exc:
                detail = " ".join(str(exc).split())
                raise UserError(f"{NAME}: the saved probe does not fit this run ({detail}); use the recipe the "
                                f"run was started with") from None
            self.optimizer.load_state_dict(state["optimizer"])

    def _ready(self, run: Run) -> None:
        if self.heads is None:
            self._build(run)

    def state_dict(self) -> dict[str, Any]:
        if self.heads is None:
            return dict(self._pending) if self._pending is not None else {}
        return {"num_classes": self.num_classes, "heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's probe; the heads are rebuilt and filled with it at run start (or on evaluate)."""
        if not state:
            return
        if self.num_classes is not None and int(state["num_classes"]) != self.num_classes:
            raise UserError(f"{NAME}: the saved probe has {int(state['num_classes'])} classes, the recipe sets "
                            f"num_classes={self.num_classes}; use the recipe the run was started with")
        self.num_classes = int(state["num_classes"])
        self._pending = state
        self.heads = self.optimizer = None

    # -- training on each step's outputs ---------------------------------------------------------
    def clrun_run_start(self, run: Run) -> None:
        self._ready(run)

    def clrun_step_outputs(self, run: Run, outputs: StepOutputs, labels: Tensor) -> None:
        self._ready(run)
        labels = torch.as_tensor(labels).long()
        if labels.ndim != 1:
            raise UserError(
                f"{NAME} trains linear classifiers on one class per image, but the training data set gives "
                f"labels of shape {tuple(labels.shape[1:])} per image (a segmentation data set's label maps): "
                f"score dense features with clrun/linear_segmentation or clrun/patch_knn, or remove {NAME} "
                f"from callbacks")
        if (labels < 0).any():
            raise UserError(
                f"{NAME} trains linear classifiers on the training labels, but the training data set has "
                f"unlabeled images (label -1): use a labeled data set in data.dataset (e.g. clrun/image_folder "
                f"with labels: subfolders), or remove {NAME} from callbacks"
            )
        if (labels >= self.num_classes).any():
            raise UserError(f"{NAME}: the training data has label {int(labels.max())} but the probe has "
                            f"num_classes={self.num_classes}; set num_classes to the number of training classes")
        inputs = {"backbone": outputs.global_features, "projector": outputs.global_projections}
        y = labels.to(run.device, non_blocking=True).repeat(len(inputs["backbone"]))
        self.heads.train()
        loss = 0.0
        accuracy = {}
        with torch.autocast(run.device.type, enabled=False):  # the heads always train in fp32
            for key in HEADS:
                x = torch.cat([t.detach().float() for t in inputs[key]])
                logits = self.heads[key](x)
                loss = loss + F.cross_entropy(logits, y)
                accuracy[key] = (logits.detach().argmax(dim=1) == y).float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # Read with the step's metrics (no host read here), logged with the step and averaged into the epoch.
        run.add_step_metric("online_train_top1", accuracy["backbone"])
        run.add_step_metric("online_train_top1_projector", accuracy["projector"])

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, run: Run) -> dict[str, float]:
        """Top-1 accuracy of the heads (as trained so far, or as saved) on the ``test`` data set."""
        if self.test is None:
            raise UserError(f"{NAME}: evaluating needs a labeled `test` data set; add test: {{name: ...}} to the callback")
        if self.heads is None and self._pending is None:
            raise UserError(f"{NAME}: there are no trained heads to evaluate: the checkpoint holds no online probe")
        self._ready(run)
        # DataLoader draws its workers' base seed from the global generator: fork it, so that an
        # evaluation in the middle of training leaves the augmentations of the next steps unchanged.
        with torch.random.fork_rng(devices=[]):
            feats, projs, y = run.features(self.test, self.batch_size, projector=self.projector,
                                           dtype=self.features_dtype)
        if (y < 0).any():
            raise UserError(f"{NAME} needs a labeled test data set (some labels are -1, i.e. unlabeled)")
        if (y >= self.num_classes).any():
            raise UserError(f"{NAME}: the test data has label {int(y.max())} but the probe has "
                            f"num_classes={self.num_classes}")
        inputs = {"backbone": feats, "projector": projs}
        measured = [key for key in HEADS if inputs[key] is not None]  # a wide projector's outputs: not embedded
        was_training = self.heads.training
        self.heads.eval()
        correct = {key: 0 for key in measured}
        try:
            with torch.no_grad():
                for start in range(0, len(y), self.batch_size):
                    target = y[start:start + self.batch_size].to(run.device)
                    for key in measured:  # features kept in half precision are upcast a batch at a time
                        logits = self.heads[key](inputs[key][start:start + self.batch_size].to(run.device).float())
                        correct[key] += int((logits.argmax(dim=1) == target).sum())
        finally:
            self.heads.train(was_training)
        n = max(len(y), 1)
        names = {"backbone": "online_top1", "projector": "online_top1_projector"}
        return {names[key]: correct[key] / n for key in measured}

    def describe(self, results: dict[str, float]) -> str:
        projector = (f", {100 * results['online_top1_projector']:.2f}% (projector outputs)"
                     if "online_top1_projector" in results else "")
        return (f"online linear probe top-1 on {len(self.test)} test images: {100 * results['online_top1']:.2f}% "
                f"(backbone features){projector}")

    # Without a test set the probe only trains (its train accuracy is logged per step): nothing to evaluate.
    def clrun_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        if self.test is not None:
            super().clrun_epoch_end(run, epoch, metrics)

    def clrun_run_end(self, run: Run, metrics: dict[str, float]) -> None:
        if self.test is not None:
            super().clrun_run_end(run, metrics)
