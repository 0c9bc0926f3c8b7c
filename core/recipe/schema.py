"""The recipe's sections. Their typed fields are the schema a recipe file is checked against.

Component entries (``Annotated[ComponentSpec, Nested(kind)]``) are checked against the chosen
component's own factory signature; everything else here belongs to the training loop.
"""

from __future__ import annotations

import warnings
from dataclasses import InitVar, dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Optional

from clrun.component import Nested
from clrun.recipe.spec import ComponentSpec


class RecipeDeprecationWarning(FutureWarning):
    """A recipe key that no longer has an effect: it is accepted for at least one release, with this warning
    (the deprecation rules in docs/guides/plugins.md), then removed."""


def deprecated(key: str, why: str) -> None:
    """Warn that the recipe key ``key`` (dotted) is deprecated and ignored; ``why``: what replaced it."""
    warnings.warn(f"{key} is deprecated and has no effect: {why}; remove it from the recipe",
                  RecipeDeprecationWarning, stacklevel=3)


class FieldError(ValueError):
    """A section's consistency check that concerns one field: reported at that field's value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _at_least(value: Any, minimum: int, name: str) -> None:
    if value is not None and value < minimum:
        raise FieldError(name, f"must be >= {minimum}, got {value}")


@dataclass
class DataSection:
    """Where images come from and how they are batched (decoding and resizing happen in CPU workers)."""

    dataset: Annotated[ComponentSpec, Nested("dataset")]
    # The global batch: with N processes (torchrun) each takes batch_size / N images per step.
    batch_size: int = 256
    num_workers: int = 2
    # Contrastive losses compare images within a batch: a short last batch changes the task, so drop it.
    drop_last: bool = True
    # Per-channel normalization applied on the device after each view's augmentations and at evaluation.
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None

    def __post_init__(self) -> None:
        _at_least(self.batch_size, 1, "batch_size")
        _at_least(self.num_workers, 0, "num_workers")
        if (self.mean is None) != (self.std is None):
            raise ValueError("set both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")


@dataclass
class ViewSection:
    """One kind of augmented view: its pipeline (run batched on the device) and how many to draw."""

    transforms: Annotated[list, Nested("augmentation", many=True)]
    count: int = 1
    name: str = ""
    # Local views (multi-crop) feed the online branch only; global views also define the eval input size.
    local: bool = False

    # More views of one image than any method draws (multi-crop: 2 global and up to 10 local), far below what
    # would exhaust memory before the first step.
    MAX_COUNT = 64

    def __post_init__(self) -> None:
        _at_least(self.count, 1, "count")
        if self.count > self.MAX_COUNT:
            raise FieldError("count", f"must be <= {self.MAX_COUNT} (multi-crop recipes draw 2 global and 6-10 local "
                                      f"views), got {self.count}")


@dataclass
class TrainSection:
    """How long and how to train."""

    epochs: int = 10
    # Stop after this many optimizer steps in total (smoke tests, `cl-run check`); None runs all epochs.
    max_steps: Optional[int] = None
    device: str = "auto"  # "auto" takes CUDA when present, else the CPU
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: Optional[float] = None
    # How grad_clip applies: "global_norm" scales all gradients by one factor (torch's clip_grad_norm_);
    # "per_parameter" clips each parameter's gradient to that norm on its own (the self-distillation methods'
    # reference clip_grad).
    grad_clip_mode: Literal["global_norm", "per_parameter"] = "global_norm"
    # NHWC memory layout for the network and the views: faster convolutions on CPUs (oneDNN) and
    # on tensor-core GPUs.
    channels_last: bool = False
    # torch.compile the backbone (in place): faster steps after a compile of a minute or more.
    compile: bool = False
    # With several processes (torchrun): BatchNorm statistics over the whole global batch (CUDA only).
    sync_batchnorm: bool = False
    # With several processes: "ddp" keeps a whole copy of the network on each (DistributedDataParallel);
    # "fsdp" splits parameters, gradients and optimizer state over them (FSDP2), with checkpoints through
    # torch.distributed.checkpoint that load on any number of processes (clrun.training.parallel.sharding).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Sharded runs (fsdp): the dtype the gathered parameters compute in, and the dtype gradients are
    # reduced in (FSDP2's MixedPrecisionPolicy); the shards and the optimizer stay in fp32.
    fsdp_param_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    fsdp_reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # Each batch in this many micro-batches, one backward each, and one optimizer step: the recipe's batch
    # at 1/N of the activation memory. For losses that are a mean of per-image terms only (a loss declares
    # it); a loss over the whole batch (negatives, batch statistics) takes grad_cache_chunks instead.
    accumulate_steps: int = 1
    # Gradient caching (Gao et al. 2021): each batch embedded in this many chunks without a graph, the loss
    # and its gradient with respect to the embeddings on the whole batch, then each chunk run again with
    # its graph and its random state, back-propagating the cached gradient. Exact for any loss; BatchNorm
    # statistics become per chunk (as they are per process under DDP).
    grad_cache_chunks: int = 1
    # Recompute each block's activations in the backward pass instead of keeping them (timm's
    # set_grad_checkpointing): less memory for about a third more compute.
    activation_checkpointing: bool = False
    # With several processes: how long the others wait for rank 0's evaluators (kNN, probes, fine-tuning:
    # the recipe's callbacks run on rank 0 only) at an epoch's end and at the run's end before the run stops
    # (clrun.training.evaluation_wait).
    evaluation_timeout_minutes: float = 60.0
    # Large-batch (LARS) practice: biases and normalization weights get no weight decay (nor LARS adaptation).
    exclude_bias_and_norm_from_weight_decay: bool = True
    checkpoint_every: int = 1  # epochs; a final checkpoint is always written
    # Also a checkpoint every this many steps, mid-epoch (written in the background), holding the place in
    # the epoch and every random stream: a run killed mid-epoch resumes bit-exactly from the last one.
    checkpoint_every_steps: Optional[int] = None
    # Continue from the run's own latest checkpoint when started again (clrun.training.checkpointing.restart): None
    # when torchrun restarts the job, true on any start (a requeued job), false never.
    auto_resume: Optional[bool] = None
    progress: bool = True  # progress bar on a terminal
    threads: Optional[int] = None  # torch CPU threads; None keeps torch's default
    # Read the step metrics (loss, NaN check, progress bar, the metrics file) every this many steps, all the steps
    # since the last read at once: reading a GPU's result makes the host wait for it. None: every step on
    # the CPU (a read costs nothing there), every 100 steps on a GPU (clrun.training.step_metrics).
    log_every: Optional[int] = None
    # CUDA: fp32 matrix products and convolutions on TF32 tensor cores (10-bit mantissa inputs, fp32
    # accumulation; what bf16 autocast leaves in fp32, such as the losses, gets it too). false: full fp32.
    tf32: bool = True
    # CUDA: cuDNN times its convolution algorithms for each new input shape and keeps the fastest (the views'
    # shapes are fixed, so once per shape). false: deterministic algorithm choice, no timing at start.
    cudnn_benchmark: bool = True

    def __post_init__(self) -> None:
        _at_least(self.epochs, 1, "epochs")
        _at_least(self.max_steps, 1, "max_steps")
        _at_least(self.checkpoint_every, 1, "checkpoint_every")
        _at_least(self.checkpoint_every_steps, 1, "checkpoint_every_steps")
        _at_least(self.threads, 1, "threads")
        _at_least(self.accumulate_steps, 1, "accumulate_steps")
        _at_least(self.grad_cache_chunks, 1, "grad_cache_chunks")
        _at_least(self.log_every, 1, "log_every")
        if self.evaluation_timeout_minutes <= 0:
            raise FieldError("evaluation_timeout_minutes", f"must be > 0, got {self.evaluation_timeout_minutes}")
        if self.accumulate_steps > 1 and self.grad_cache_chunks > 1:
            raise FieldError("grad_cache_chunks", "gradient caching and train.accumulate_steps split the batch two "
                             "ways at once; set one of them (grad_cache_chunks for a loss over the whole batch)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")


@dataclass
class MaskingSection:
    """Masked views for token-level objectives. Per batch, the mask generator (a ``mask`` component) draws
    which patches of each global view the online backbone sees; the hidden patches are replaced by the
    backbone's learned mask token (``hidden: mask_token``; the backbone option ``mask_token: true``) or
    left out of its sequence (``hidden: drop``; the generator must keep one count per image). The target
    network sees the whole global views, and its tokens reach the loss too. Needs a backbone that offers
    tokens (``clrun.tokens``: a timm vision transformer)."""

    generator: Annotated[ComponentSpec, Nested("mask")]
    hidden: Literal["mask_token", "drop"] = "mask_token"
    # A token head (a ``token_head`` component: MAE's pixel decoder, I-JEPA's predictor) on the online
    # branch: from a masked view's tokens it predicts every target set's patches (StepOutputs.token_predictions).
    head: Optional[Annotated[ComponentSpec, Nested("token_head")]] = None
    # Deprecated, no effect: the projector maps every patch token when the loss reads the token
    # projections (its ``reads``). Accepted so that recipes and run folders written before still load; an
    # InitVar, so a resolved recipe (the run folder's, a resume's comparison) no longer carries it.
    project_tokens: InitVar[Optional[bool]] = None

    def __post_init__(self, project_tokens: Optional[bool]) -> None:
        if project_tokens is not None:
            deprecated("masking.project_tokens", "the token projections are computed when the loss reads them "
                                                 "(its reads: online.token_projections, target.token_projections)")


@dataclass
class SnapshotSection:
    """An earlier copy of the target network's backbone, frozen between refreshes: a reference that the
    current network's patch features are kept close to (a loss that reads ``target.snapshot_tokens``).

    The first copy is the target as the run starts (with ``init:``, the weights it starts from); then it
    is refreshed to the target's current weights every ``every`` optimizer steps (none: never), not
    before step ``after``, at most ``max_refreshes`` times. ``scale``: it sees the global views resized by
    this factor (bicubic), so that its patch grid is finer than the network's (a loss resizes its tokens
    back; an upscaled view, not a crop taken again at a higher resolution)."""

    every: Optional[int] = None
    after: int = 0
    max_refreshes: Optional[int] = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        _at_least(self.every, 1, "every")
        _at_least(self.after, 0, "after")
        _at_least(self.max_refreshes, 1, "max_refreshes")
        if not 0.25 <= self.scale <= 4:
            raise FieldError("scale", f"must be between 0.25 and 4 (e.g. 2.0: twice the views' size), got {self.scale}")


@dataclass
class TargetSection:
    """A momentum (EMA) target network: a copy of backbone + projector that never receives gradients.

    After every optimizer step its weights move towards the online ones,
    ``target = m * target + (1 - m) * online``, with ``m`` going from ``momentum`` to ``final_momentum``
    over the run (``cosine``: ``m = final - (final - momentum) * (cos(pi * step / total_steps) + 1) / 2``;
    ``linear``: ``m = momentum + (final - momentum) * step / total_steps``, I-JEPA's; ``constant``:
    ``m = momentum`` throughout). It sees the global views only; losses get its projector
    outputs as ``target_projections``.
    """

    momentum: float = 0.996
    final_momentum: float = 1.0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    # A frozen, now and then refreshed copy of the target's backbone (SnapshotSection); None: no such copy.
    snapshot: Optional[SnapshotSection] = None

    def __post_init__(self) -> None:
        for name in ("momentum", "final_momentum"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FieldError(name, f"must be between 0 and 1 (e.g. 0.99 or 0.996), got {value}")


@dataclass
class AlarmSection:
    """The health alarm: fires when a health signal of the watched branch stays beyond its threshold
    for ``patience`` consecutive checks (the collapse alarm), or the epoch loss explodes or stops changing
    for ``patience`` consecutive epochs (the loss alarm; a threshold set to null is not checked). ``warn``
    prints and goes on; ``halt`` stops the run, and while a signal is beyond its threshold no checkpoint
    is written, so the last one on disk is a healthy one."""

    action: Literal["warn", "halt", "off"] = "warn"
    patience: int = 2
    branch: Literal["projector", "backbone"] = "projector"
    # Collapsed embeddings have std_sqrt_d -> 0, rankme -> 1 and uniformity -> 0; healthy ones ~1, tens, ~-3.
    min_std_sqrt_d: float = 0.1
    min_rankme: float = 2.0
    max_uniformity: float = -0.1
    # An epoch loss above this has exploded. The built-in losses stay far below it when they train
    # (a contrastive one ~ log of the batch size, a redundancy-reduction one ~ its projector width); a
    # contrastive loss at temperature 1e-8 reaches ~1e7.
    max_loss: Optional[float] = 1.0e6
    # ... or above this many times the first epoch's (when that one is positive).
    max_loss_growth: Optional[float] = 10.0
    # A relative change of the epoch loss from the epoch before below this is "constant". Augmentations
    # alone move the epoch mean of a live network (measured with lr 1e-12: 3e-4 to 3e-2 on 16 and 4 steps
    # an epoch; about 2e-5 expected at 5,000 steps); a dead one repeats its loss to float precision.
    min_loss_change: Optional[float] = 1.0e-6

    def __post_init__(self) -> None:
        _at_least(self.patience, 1, "patience")
        if self.max_loss is not None and not self.max_loss > 0:
            raise FieldError("max_loss", f"must be > 0 (or null to not check it), got {self.max_loss}")
        if self.max_loss_growth is not None and not self.max_loss_growth > 1:
            raise FieldError("max_loss_growth", f"must be > 1 (or null to not check it), got {self.max_loss_growth}")
        if self.min_loss_change is not None and not 0 <= self.min_loss_change < 1:
            raise FieldError("min_loss_change", f"must be >= 0 and < 1 (or null to not check it), got {self.min_loss_change}")


@dataclass
class HealthSection:
    """The health monitor (on by default): alignment, uniformity, std of normalized embeddings, RankMe and
    positive/negative cosines of backbone features and projector outputs, measured on two augmented views
    of a fixed sample of training images, in eval mode, with its own random stream."""

    enabled: bool = True
    every: int = 1  # epochs
    samples: int = 1024  # images in the fixed sample (RankMe is bounded by 2x this)
    batch_size: int = 256
    alarm: AlarmSection = field(default_factory=AlarmSection)

    def __post_init__(self) -> None:
        _at_least(self.every, 1, "every")
        _at_least(self.samples, 2, "samples")
        _at_least(self.batch_size, 1, "batch_size")


@dataclass
class ParamGroupRule:
    """Settings for the parameters whose names match ``match`` (fnmatch patterns on names such as
    ``backbone.blocks.0.attn.qkv.weight``, ``projector.last_layer.weight``, ``predictor.*``,
    ``loss.prototypes.weight``; `cl-run check` lists the groups). A parameter follows the first rule that
    matches it."""

    match: list[str]
    lr_scale: float = 1.0  # times the optimizer's lr, under its scheduler
    weight_decay: Optional[float] = None  # instead of the optimizer's (biases and norms keep none)
    fixed_lr: bool = False  # the scheduler leaves this group's lr alone (e.g. a predictor head)
    frozen_epochs: float = 0.0  # not updated at all for the first N epochs (e.g. a head's last layer)
    frozen: bool = False  # never updated: kept at its initialization (e.g. a random patch projection)

    def __post_init__(self) -> None:
        if not self.match:
            raise FieldError("match", "give at least one pattern, e.g. [predictor.*]")
        if self.lr_scale < 0:
            raise FieldError("lr_scale", f"must be >= 0, got {self.lr_scale}")
        if self.frozen_epochs < 0:
            raise FieldError("frozen_epochs", f"must be >= 0, got {self.frozen_epochs}")
        if self.frozen and self.frozen_epochs:
            raise FieldError("frozen_epochs", "frozen: true already keeps these parameters fixed for the whole run; "
                                              "remove one of the two")


@dataclass
class ParamsSection:
    """How the trainable parameters are grouped for the optimizer."""

    groups: list[ParamGroupRule] = field(default_factory=list)
    # Layer-wise learning-rate decay (ViT fine-tuning): the backbone's layer i of L (timm's
    # group_matcher: the stem is 0, block k is k + 1) learns at lr * layer_decay**(L + 1 - i); the heads at lr.
    layer_decay: Optional[float] = None

    def __post_init__(self) -> None:
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise FieldError("layer_decay", f"must be in (0, 1], e.g. 0.65 or 0.75, got {self.layer_decay}")


@dataclass
class RunSection:
    """Where the run folder goes: ``<dir>/<name>`` (name defaults to the recipe file's stem)."""

    dir: str = "runs"
    name: Optional[str] = None


@dataclass
class InitSource:
    """Where one part's initial weights come from (``clrun.weights``): ``source`` is a weight file
    (safetensors, or a ``torch.save`` pickle read without running code), a model folder (timm's
    ``config.json`` + ``model.safetensors``), a cl-run run folder or checkpoint, or a Hugging Face Hub
    repository (``hf-hub:timm/vit_small_patch16_224.augreg_in21k``). ``layout``: the file's family (a
    ``weights_layout`` component, e.g. an official training checkpoint's), ``auto`` to recognize it by its
    keys. ``network``: which network of a file that holds several (``teacher``, ``student``, ``online``,
    ``target``); ``auto``: the layout's first (a teacher where there is one). ``strict``: every tensor of the
    part must load and every one of the file's must be used (shapes too; position embeddings are resampled
    to the recipe's image size by the backbone's rules); false loads what matches and reports the rest."""

    source: str
    layout: str = "auto"
    network: str = "auto"
    strict: bool = True

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise FieldError("source", "give a weight file, a model folder, a run folder or a Hub repository")


@dataclass
class InitSection:
    """Start a fresh run from weights (a resumed run continues from its checkpoint instead): per part of
    the online network, an ``InitSource``. The target network (``target:``) starts from ``target``'s
    weights when given, else from the teacher (or target) network of the backbone's file when that file
    holds one, else as a copy of the online network, as without ``init:``."""

    backbone: Optional[InitSource] = None
    projector: Optional[InitSource] = None
    predictor: Optional[InitSource] = None
    token_head: Optional[InitSource] = None
    target: Optional[InitSource] = None

    def __post_init__(self) -> None:
        if not any((self.backbone, self.projector, self.predictor, self.token_head, self.target)):
            raise ValueError("init: name at least one part (backbone, projector, predictor, token_head, target), "
                             "e.g. backbone: {source: path/to/weights.safetensors}")


@dataclass
class Recipe:
    """A whole recipe: components chosen by name, plus the loop's own settings."""

    data: DataSection
    views: list[ViewSection]
    backbone: Annotated[ComponentSpec, Nested("backbone")]
    projector: Annotated[ComponentSpec, Nested("projector")]
    loss: Annotated[ComponentSpec, Nested("loss")]
    optimizer: Annotated[ComponentSpec, Nested("optimizer")]
    scheduler: Optional[Annotated[ComponentSpec, Nested("scheduler")]] = None
    # An extra head on the online branch only: backbone -> projector -> predictor.
    predictor: Optional[Annotated[ComponentSpec, Nested("predictor")]] = None
    target: Optional[TargetSection] = None
    masking: Optional[MaskingSection] = None
    # Initial weights for a fresh run (released or earlier weights): clrun.weights.
    init: Optional[InitSection] = None
    callbacks: Annotated[list, Nested("callback", many=True)] = field(default_factory=list)
    health: HealthSection = field(default_factory=HealthSection)
    params: ParamsSection = field(default_factory=ParamsSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunSection = field(default_factory=RunSection)
    seed: int = 0
    # Set by load_recipe: the file it came from (not a recipe key).
    source: ClassVar[str] = "<api>"

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("views: at least one view is needed")
        if isinstance(self.seed, int) and not -2**63 <= self.seed < 2**64:  # torch.manual_seed's range
            raise FieldError("seed", f"must fit in 64 bits ({-2**63} to {2**64 - 1}), got {self.seed}")
