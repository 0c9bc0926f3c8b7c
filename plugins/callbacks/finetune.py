"""Fine-tuning evaluation: the whole pre-trained encoder and a linear head trained end to end on a labeled
set, top-1 accuracy on a test set (the fine-tuning protocol of Chen et al. 2020, SimCLR, appendix B.6,
and of He et al. 2020, MoCo; the head starts from a linear probe as in Kumar et al. 2022, "Fine-Tuning
can Distort Pretrained Features and Underperform Out-of-Distribution", LP-FT)."""

from __future__ import annotations

import copy
import math
from contextlib import ExitStack, contextmanager
from typing import Annotated, Iterator, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from clrun import ComponentError, Nested, Range, Run, UserError, checked, distributed
from clrun.callback import Evaluator
from clrun.plugins.callbacks.class_lists import check_same_classes
from clrun.plugins.callbacks.linear import cosine_factor, init_linear, moments, train_linear_classifier

NAME = "clrun/finetune"
BRANCHES = ("backbone", "projector")
KEYS = {"backbone": "finetune_top1", "projector": "finetune_top1_projector"}
# Light augmentation of the fine-tuning batches: a random resized crop of this area fraction and aspect
# ratio (resized back to the evaluation size), mirrored with probability 1/2.
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def dataset_labels(dataset: Dataset) -> Tensor:
    """All labels of a data set: its ``targets`` when it has them, otherwise read item by item."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets).long()
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def random_resized_crop_flip(x: Tensor, generator: torch.Generator, scale: tuple[float, float] = CROP_SCALE,
                             ratio: tuple[float, float] = CROP_RATIO) -> Tensor:
    """Each image of the float batch ``x`` (B, C, H, W) cropped to a random rectangle (``scale``: its area as a
    fraction of the image's; ``ratio``: its aspect ratio), resized back to (H, W), and mirrored left-right
    with probability 1/2. One bilinear ``grid_sample`` for the whole batch; the random parameters come from
    ``generator`` (a CPU generator), never from the global one."""
    b = x.shape[0]
    area = torch.empty(b, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(b, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)  # crop width and height as fractions of the image's
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * (1 - w)  # centres, in [-1, 1] coords
    cy = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(device=x.device, dtype=torch.float32)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


@contextmanager
def private_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Inside: torch's global generators (the CPU's, and ``device``'s when it is a GPU) seeded with ``seed``
    (dropout or drop-path in a fine-tuned backbone draws from them); on exit, restored as they were."""
    with ExitStack() as stack:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            stack.enter_context(torch.random.fork_rng(devices=[index]))
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        else:
            stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.default_generator.manual_seed(seed)
        yield


@checked
class FineTune(Evaluator):
    """Fine-tuning evaluation: for each branch, a copy of the encoder plus a linear head trained end to end
    on the labeled ``train`` set, its top-1 accuracy on ``test``: ``finetune_top1`` for a copy of the
    backbone, ``finetune_top1_projector`` for a copy of backbone + projector (the head on the projector's
    outputs). The run's own network is never changed (the branches train deep copies), nor its random
    streams (the fine-tuning draws from private generators seeded with ``seed``, so evaluating twice gives
    the same numbers on the CPU; on a GPU, up to the backward kernels' own nondeterminism).

    Recipe: the train images as at evaluation (``Run.preprocess``: resized and normalized as in
    training), with a light ``augment``ation; the whole encoder trains (parameters frozen in the run
    included), with AdamW at ``lr`` and the head at ``lr * head_lr_scale``, both cosine-annealed to 0 over
    ``epochs``, in the run's precision (``train.precision``). The head is ``BatchNorm1d(affine=False)``
    (the features at unit scale whatever the encoder's) and a ``Linear`` layer that, with
    ``head_init: probe``, starts as the linear probe of the frozen features (LP-FT, Kumar et al. 2022: the
    encoder is then not distorted by the gradients of a random head). After training, the BatchNorm
    statistics are re-estimated with the final weights on the unaugmented train set (precise BatchNorm,
    Wu & Johnson 2021; the running averages of a short fine-tuning lag behind its weights), then top-1 on
    ``test`` in eval mode. Cost per branch: ``epochs`` forward-backward passes over ``train``, one
    forward pass over ``train`` and one over ``test``; plus one shared forward pass over ``train`` for
    the frozen features.

    train:         labeled data set to fine-tune on (uint8 images, as the training data set gives them)
    test:          labeled data set to measure on (e.g. the official test split, never trained on)
    epochs:        passes over ``train`` per branch
    lr:            AdamW peak learning rate of the encoder (cosine-annealed to 0)
    head_lr_scale: the head's learning rate is ``lr`` times this
    weight_decay:  AdamW (decoupled) weight decay
    batch_size:    images per fine-tuning step (and per evaluation batch)
    augment:       random resized crop (35-100% of the area, aspect 3/4-4/3) and horizontal flip of the
                   training batches; false: the images as at evaluation
    branches:      which of "backbone" and "projector" to fine-tune (each costs a full fine-tuning); null:
                   the backbone, and the projector too where it is at most 2048 wide (a wider one's
                   frozen outputs of the train set are not embedded unless asked for here)
    head_init:     "probe": the head starts as the linear probe of the frozen features (LP-FT);
                   "random": PyTorch's default initialization of a Linear layer
    seed:          seed of the head, the batch order, the augmentations and any dropout in the encoder
    every:         also evaluate every this many epochs of pre-training (0: only at the end of the run)
    layer_decay:   layer-wise learning-rate decay (BEiT, MAE: 0.65-0.75 for ViTs): backbone layer ``i`` of
                   ``L`` (by its ``layer_ids()``, timm's grouping: the stem 0, block k k + 1) learns at
                   ``lr * layer_decay ** (L + 1 - i)``, the projector (branch "projector") at ``lr``;
                   null: one rate for the whole encoder
    """

    def __init__(
        self,
        train: Annotated[Dataset, Nested("dataset")],
        test: Annotated[Dataset, Nested("dataset")],
        epochs: Annotated[int, Range(min=1)] = 3,
        lr: Annotated[float, Range(min=0, exclusive_min=True)] = 3e-4,
        head_lr_scale: Annotated[float, Range(min=0, exclusive_min=True)] = 10.0,
        weight_decay: Annotated[float, Range(min=0)] = 0.05,
        batch_size: Annotated[int, Range(min=1)] = 256,
        augment: bool = True,
        branches: Optional[Sequence[Literal["backbone", "projector"]]] = None,
        head_init: Literal["probe", "random"] = "probe",
        seed: int = 0,
        every: Annotated[int, Range(min=0, hint="0: only at the end of the run")] = 0,
        layer_decay: Optional[Annotated[float, Range(min=0, max=1, exclusive_min=True,
                                                     hint="MAE fine-tunes ViTs with 0.65-0.75")]] = None,
    ) -> None:
        if branches is not None:
            branches = list(branches)
            unknown = [b for b in branches if b not in BRANCHES]
            if not branches or unknown or len(set(branches)) != len(branches):
                raise ComponentError(f"{NAME}: branches must name each of 'backbone' and 'projector' at most once, "
                                     f"and at least one of them; got {branches}", argument="branches")
        check_same_classes(NAME, train, test)
        self.train, self.test = train, test
        self.epochs, self.lr, self.head_lr_scale, self.weight_decay = epochs, lr, head_lr_scale, weight_decay
        self.batch_size, self.augment, self.branches, self.head_init = batch_size, augment, branches, head_init
        self.seed, self.every, self.layer_decay = seed, every, layer_decay

    # -- helpers ---------------------------------------------------------------------------------
    def _labels(self) -> tuple[Tensor, Tensor, int]:
        train_y, test_y = dataset_labels(self.train), dataset_labels(self.test)
        if len(train_y) < 2 or len(test_y) == 0:
            raise UserError(f"{NAME} needs at least 2 train images and 1 test image (train has {len(train_y)} "
                            f"images, test {len(test_y)})")
        if (train_y < 0).any() or (test_y < 0).any():
            raise UserError(f"{NAME} needs labeled train and test data sets (some labels are -1, i.e. unlabeled)")
        return train_y, test_y, int(torch.cat([train_y, test_y]).max()) + 1

    def _loader(self, run: Run, dataset: Dataset, shuffle: bool, generator: torch.Generator) -> DataLoader:
        drop_last = shuffle and len(dataset) > self.batch_size  # no 1-image batch for BatchNorm to choke on
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=run.recipe.data.num_workers, generator=generator)

    def _model(self, run: Run, branch: str, features: Tensor, labels: Tensor, num_classes: int,
               generator: torch.Generator) -> nn.Module:
        """A copy of the branch's encoder, then the head: ``BatchNorm1d(affine=False)`` (its running
        statistics start as the frozen features' mean and variance) and a ``Linear`` layer."""
        network = run.network
        # Trained on rank 0 alone: SyncBatchNorm layers (train.sync_batchnorm) become per-process ones.
        encoder = [distributed.without_sync_batchnorm(copy.deepcopy(network.backbone))]
        if branch == "projector":
            encoder.append(distributed.without_sync_batchnorm(copy.deepcopy(network.projector)))
        # The normalization keeps the head's inputs at unit scale whatever the encoder's (and whatever the
        # gap between its train- and eval-mode outputs): one learning rate suits every run.
        norm = nn.BatchNorm1d(features.shape[1], affine=False)
        mean, var = moments(features)  # in chunks: half-precision features are never upcast whole
        with torch.no_grad():
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
        if self.head_init == "probe":  # the probe sees the features through the norm, a mini-batch at a time
            linear = train_linear_classifier(features, labels, num_classes, seed=self.seed, device=run.device,
                                             inputs=norm.eval())
        else:
            linear = init_linear(features.shape[1], num_classes, generator)
        model = nn.Sequential(*encoder, nn.Sequential(norm, linear)).to(run.device)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    @torch.no_grad()
    def _recompute_batchnorm(self, run: Run, model: nn.Module, dtype: torch.dtype | None) -> None:
        """Precise BatchNorm statistics (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): the running
        statistics re-estimated by one pass over the (unaugmented) train set with the final weights, as a
        plain average over its batches. During a short fine-tuning the running averages lag behind the
        changing weights, and eval-mode accuracy can drop far below train-mode accuracy."""
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not norms:
            return
        model.eval()  # dropout and the like stay off; only the BatchNorm layers collect statistics
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        try:
            for images, *_ in self._loader(run, self.train, False, torch.Generator()):
                with torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None):
                    model(run.preprocess(images))
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            model.eval()

    @torch.no_grad()
    def _accuracy(self, run: Run, model: nn.Module, dtype: torch.dtype | None) -> float:
        model.eval()
        correct = total = 0
        for images, y, *_ in self._loader(run, self.test, False, torch.Generator()):
            with torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(run.preprocess(images))
            correct += int((logits.argmax(dim=1).cpu() == torch.as_tensor(y)).sum())
            total += len(y)
        return correct / total

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        """AdamW's groups for ``model`` (backbone copy, [projector copy,] head): no weight decay on biases
        and norms; the head at ``lr * head_lr_scale``; with ``layer_decay``, one rate per backbone layer."""
        head = list(model[-1].parameters())
        scales = self._layer_scales(model[0])  # backbone parameter -> rate factor
        rates: dict[float, list[nn.Parameter]] = {}
        for p in model.parameters():
            if not any(p is h for h in head):
                rates.setdefault(scales.get(p, 1.0), []).append(p)
        rates.setdefault(self.head_lr_scale, []).extend(head)
        groups = []
        for scale, params in rates.items():
            groups.append({"params": [p for p in params if p.ndim > 1], "lr": self.lr * scale})
            groups.append({"params": [p for p in params if p.ndim <= 1], "lr": self.lr * scale, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def _layer_scales(self, backbone: nn.Module) -> dict[nn.Parameter, float]:
        if self.layer_decay is None:
            return {}
        layer_ids = getattr(backbone, "layer_ids", None)
        if not callable(layer_ids):
            raise UserError(f"{NAME}: layer_decay needs a backbone that says how its parameters form layers (a "
                            f"layer_ids() method, as timm backbones have); remove layer_decay for this backbone")
        layer_of = layer_ids()
        last = max(layer_of.values())
        named = dict(backbone.named_parameters())
        return {named[name]: self.layer_decay ** (last + 1 - layer) for name, layer in layer_of.items() if name in named}

    @torch.enable_grad()
    def _finetune(self, run: Run, model: nn.Module) -> None:
        groups = self.parameter_groups(model)
        peak = [g["lr"] for g in groups]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        dtype = AMP[run.recipe.train.precision]
        scaler = torch.amp.GradScaler(run.device.type, enabled=dtype is torch.float16)
        generator = torch.Generator().manual_seed(self.seed)
        loader = self._loader(run, self.train, True, generator)
        total_steps, step = self.epochs * len(loader), 0
        model.train()
        for _ in range(self.epochs):
            for images, y, *_ in loader:
                for group, top in zip(optimizer.param_groups, peak):
                    group["lr"] = top * cosine_factor(step, total_steps)
                x = run.preprocess(images)
                if self.augment:
                    x = random_resized_crop_flip(x, generator)
                with torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(model(x).float(), torch.as_tensor(y).long().to(run.device))
                if not torch.isfinite(loss):
                    raise UserError(f"{NAME}: the fine-tuning loss is {loss.item()} at step {step + 1}; lower lr "
                                    f"(now {self.lr}) or head_lr_scale (now {self.head_lr_scale})")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1

    # -- the evaluator protocol ------------------------------------------------------------------
    def evaluate(self, run: Run) -> dict[str, float]:
        _, _, num_classes = self._labels()  # before any work: unlabeled data is an error
        # Without a choice of branches, the projector's too where it is narrow (Run.features' "auto").
        projector = "auto" if self.branches is None else "projector" in self.branches
        with torch.random.fork_rng(devices=[]):  # the frozen encoder's outputs
            features, projections, train_y = run.features(self.train, self.batch_size, projector=projector)
        frozen = {"backbone": features, "projector": projections}
        branches = [b for b in (self.branches or BRANCHES) if frozen[b] is not None]
        dtype = AMP[run.recipe.train.precision]
        results = {}
        for branch in branches:
            with private_rng(run.device, self.seed):
                model = self._model(run, branch, frozen[branch], train_y, num_classes,
                                    torch.Generator().manual_seed(self.seed))
                self._finetune(run, model)
                self._recompute_batchnorm(run, model, dtype)
                results[KEYS[branch]] = self._accuracy(run, model, dtype)
            del model
        return results

    def describe(self, results: dict[str, float]) -> str:
        parts = [f"{100 * results[KEYS[b]]:.2f}% ({'backbone features' if b == 'backbone' else 'projector outputs'})"
                 for b in BRANCHES if KEYS[b] in results]
        return (f"fine-tuned top-1 on {len(self.test)} test images: {', '.join(parts)}; "
                f"{self.epochs} epochs on {len(self.train)} images")
