"""A reference trajectory of the official MAE pre-training step (facebookresearch/mae), tiny, on the CPU, float64.

It runs the official ``engine_pretrain.train_one_epoch`` itself, unmodified, for 3 "epochs" of 10 steps, with the
official ``models_mae.MaskedAutoencoderViT`` (made tiny: ``mae_weights.MODEL``), ``util.lr_sched``, ``util.misc``
(``MetricLogger``, ``NativeScalerWithGradNormCount``), timm 0.3.2's ``add_weight_decay`` and
``torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95))``, built as ``main_pretrain.main`` builds them,
with the settings given as the official command-line flags (``flags``, parsed by the official
``get_args_parser``). The data are ``mae_data.py``'s views (Fashion-MNIST, batch 8, one 28 px crop per image)
and masking noise; the initial weights are the official model's own (``initialize_weights`` under
``torch.manual_seed(0)``), checked bit for bit against ``mae_weights.initial_weights(0)``, which makes them
without the official code. It records, per step, what a reimplementation must reproduce, in
``fixtures/mae_official.json``.

Usage (DIR: a tree of facebookresearch/mae at the commit of README.md, with that commit in ``DIR/.commit`` when it
is not a git checkout; see README.md for the export)::

    .venv/bin/python tests/parity/make_mae.py --official DIR [--timm032 TIMMDIR]

What is patched to run the official code on today's torch, numpy and timm, on a CPU, without its launcher (no
official file is edited; each patch is made below, where it is applied):

* timm: the official code pins timm 0.3.2 (which does not import on torch 2). By default ``sys.modules`` gets
  ``mae_timm_shim.shim_modules()`` while the official code is imported: timm 0.3.2's ``PatchEmbed``, ``Block``
  (0.3.2's attention forward, operation for operation) and ``add_weight_decay`` built on the installed timm 1.x,
  with ``timm.__version__ == "0.3.2"`` for main_pretrain.py's version assert. With ``--timm032 TIMMDIR`` the
  genuine timm 0.3.2 is used instead (the shim is checked to give the same bits: README.md);
* ``torch._six`` (gone since torch 2.0; util/misc.py imports ``inf`` from it) is a module with ``inf = math.inf``
  (``mae_timm_shim.torch_six``) while the official code is imported;
* util/pos_embed.py uses ``np.float`` (gone since numpy 1.24): its global ``np`` is a proxy of numpy with
  ``float = float`` (what ``np.float`` was: the builtin float, float64);
* ``MaskedAutoencoderViT.patchify`` hard-codes 3 channels (``imgs.reshape(N, 3, h, p, w, p)``: with
  ``in_chans=1`` the loss fails); the model is a subclass whose ``patchify`` takes the channel count from the
  tensor (the same permutation; checked bit for bit against the official on 3 channels). ``unpatchify`` (also 3
  channels) is not used in training and stays as it is;
* the masking noise: ``models_mae``'s global ``torch`` is a proxy whose ``rand(N, L, device=...)`` (called only by
  ``random_masking``) returns the step's ``mae_data.mask_noise`` instead of a draw;
* ``engine_pretrain``'s global ``torch`` is a proxy whose ``cuda.synchronize`` does nothing (no GPU; it only
  times). ``torch.cuda.amp.autocast()`` runs as is: without CUDA it disables itself (CPU ops are never autocast
  by it anyway); ``torch.cuda.amp.GradScaler()`` in ``NativeScalerWithGradNormCount`` also disables itself, so
  ``scale(loss)`` is ``loss`` and ``unscale_``/``update`` do nothing and ``step`` is ``optimizer.step()``.
  Run as a script, it sets ``CUDA_VISIBLE_DEVICES`` empty before torch is imported so that this holds on a
  machine with a GPU too (``run`` asserts that the scaler is disabled);
* ``misc.init_distributed_mode`` is not called (it would replace ``builtins.print``); ``args.distributed = False``
  as it sets without a launcher. One process: ``all_reduce_mean`` and ``synchronize_between_processes`` are
  identities as they are; no DDP;
* ``torch.set_default_dtype(torch.float64)`` before the model is built: everything runs in float64 (the fixed
  position embeddings are nevertheless float32-rounded by the official ``.float()``);
* the model: ``--model`` names nothing in models_mae; ``MaskedAutoencoderViT(**mae_weights.MODEL,
  norm_layer=partial(nn.LayerNorm, eps=1e-6))`` is built as ``mae_vit_base_patch16`` builds its own
  (``norm_pix_loss`` from the flag);
* the data: 10 batches per epoch from ``mae_data.py`` instead of ``ImageFolder`` + the transform +
  ``DistributedSampler`` + ``DataLoader``; no ``SummaryWriter`` (``log_writer=None``), no checkpoints.

Observation only (no change to what runs): a forward hook on the model (loss, prediction, mask), a wrapper
around the loss scaler that records the gradient norm it returns (``get_grad_norm_`` before the step) and the
loader, which records the state after each step before it hands out the next batch.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before torch is imported: the official GradScaler/autocast must find no GPU
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timm.optim import param_groups_weight_decay  # noqa: E402  (the installed timm 1.x's, for comparison)
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.parity import mae_data as D  # noqa: E402
from tests.parity import mae_timm_shim as S  # noqa: E402
from tests.parity import mae_weights as W  # noqa: E402
from tests.parity import official_code as O  # noqa: E402
from tests.parity import views as V  # noqa: E402

STEPS_PER_EPOCH = 10
EPOCHS = 3
CHECKSUM_STEPS = (0, 10, 20, 29)
VIEW_SEED = 0
MASK_SEED = 0
SEED = 0  # --seed: torch.manual_seed before the model is built (its initial weights)
# Tensors whose [sum, sum of squares] are recorded initially and after CHECKSUM_STEPS.
TENSORS = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "patch_embed.proj.weight",
           "patch_embed.proj.bias", "blocks.1.mlp.fc2.weight", "norm.weight", "decoder_embed.weight",
           "decoder_blocks.0.attn.qkv.weight", "decoder_pred.weight", "decoder_pred.bias")
OFFICIAL_FILES = ("models_mae.py", "engine_pretrain.py", "main_pretrain.py", "util/misc.py", "util/lr_sched.py",
                  "util/pos_embed.py")


def flags(output_dir: str) -> list[str]:
    """The official command line of the run (main_pretrain.py's get_args_parser)."""
    return [
        "--batch_size", str(D.BATCH), "--epochs", str(EPOCHS), "--accum_iter", "1",
        "--model", "(tiny: mae_weights.MODEL)", "--input_size", str(W.IMG), "--mask_ratio", str(D.MASK_RATIO),
        "--norm_pix_loss", "--weight_decay", "0.05",
        # lr = blr * batch_size * accum_iter * world_size / 256 = 0.032 * 8 / 256 = 1e-3 (main_pretrain.py)
        "--blr", "0.032", "--min_lr", "1e-5", "--warmup_epochs", "1",
        "--data_path", "(mae_data.py: Fashion-MNIST)", "--output_dir", output_dir, "--log_dir", output_dir,
        "--device", "cpu", "--seed", str(SEED), "--num_workers", "0",
    ]


def pair(t: torch.Tensor) -> list[float]:
    return W.checksums(t)


# --------------------------------------------------------------------------------------------- the patches
def channel_generic(models_mae) -> type:
    """The official model with a ``patchify`` for any channel count (the official one reshapes to 3 channels).

    Written here (not copied): (N, C, h*p, w*p) -> (N, h*w, p*p*C), patches row-major, each patch's values in
    (row, column, channel) order, as the official einsum ``'nchpwq->nhwpqc'`` orders them; a pure permutation,
    so for 3 channels it gives the official values bit for bit (``check_patchify``)."""
    base = models_mae.MaskedAutoencoderViT

    class MaskedAutoencoderViT(base):
        def patchify(self, imgs):
            p = self.patch_embed.patch_size[0]
            n, c, height, width = imgs.shape
            assert height == width and height % p == 0
            h = w = height // p
            x = imgs.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # n, h, w, p, q, c
            return x.reshape(n, h * w, p * p * c)

    MaskedAutoencoderViT.__module__ = base.__module__
    return MaskedAutoencoderViT


def check_patchify(models_mae, cls) -> dict:
    """The replacement equals the official patchify on 3 channels; the official fails on 1."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        three = models_mae.MaskedAutoencoderViT(img_size=W.IMG, patch_size=W.PATCH, in_chans=3, embed_dim=8,
                                                depth=1, num_heads=1, decoder_embed_dim=8, decoder_depth=1,
                                                decoder_num_heads=1)
    imgs = torch.randn(2, 3, W.IMG, W.IMG, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = torch.equal(cls.patchify(three, imgs), three.patchify(imgs))
    try:
        three.patchify(imgs[:, :1])
        official_one_channel = "runs"
    except RuntimeError as e:
        official_one_channel = f"RuntimeError: {str(e).splitlines()[0]}"
    assert same
    return {"equal_to_official_on_3_channels": same, "official_on_1_channel": official_one_channel}


class NoiseFeed:
    """``torch.rand`` for models_mae: the noise of the current step (one call per step)."""

    def __init__(self, noise: np.ndarray):
        self.noise, self.step, self.calls = noise, 0, [0] * noise.shape[0]

    def __call__(self, *size, device=None, **kwargs):
        assert not kwargs and tuple(size) == self.noise.shape[1:], (size, kwargs)
        self.calls[self.step] += 1
        return torch.from_numpy(self.noise[self.step].copy()).to(device)


class RecordingScaler:
    """The official loss scaler; records the gradient norm its ``__call__`` returns."""

    def __init__(self, scaler, record):
        self.scaler, self.record = scaler, record

    def __call__(self, loss, optimizer, **kwargs):
        norm = self.scaler(loss, optimizer, **kwargs)
        self.record(norm)
        return norm

    def __getattr__(self, name):
        return getattr(self.scaler, name)


class Loader:
    """One epoch of the official DataLoader: ``(samples (B, 1, 28, 28), labels)`` per step; after a step's body
    (the next batch is asked for, or the epoch ends) ``after_step(it)`` records the state."""

    def __init__(self, epoch: int, batches: list[torch.Tensor], before_step, after_step):
        self.epoch, self.batches, self.before_step, self.after_step = epoch, batches, before_step, after_step

    def __len__(self) -> int:
        return STEPS_PER_EPOCH

    def __iter__(self):
        for i in range(STEPS_PER_EPOCH):
            it = self.epoch * STEPS_PER_EPOCH + i
            self.before_step(it)
            samples = self.batches[it]
            yield samples, torch.zeros(samples.shape[0], dtype=torch.int64)
            self.after_step(it)


# ------------------------------------------------------------------------------------------------------- a run
def run(mods: dict, args, batches: list[torch.Tensor], noise: np.ndarray) -> dict:
    """main_pretrain.main's set-up (from "fix the seed" to the epoch loop) and the official train_one_epoch for
    each epoch; returns the initial weights and the per-step records."""
    models_mae, engine, misc, optim_factory = (mods[k] for k in ("models_mae", "engine", "misc", "optim_factory"))
    args.distributed = False  # what misc.init_distributed_mode sets without a launcher
    device = torch.device(args.device)
    seed = args.seed + misc.get_rank()
    torch.manual_seed(seed)
    np.random.seed(seed)
    # ---- define the model (main_pretrain.py: models_mae.__dict__[args.model](norm_pix_loss=...), tiny)
    model_cls = channel_generic(models_mae)
    config = {k: v for k, v in W.MODEL.items() if k != "norm_pix_loss"}
    model = model_cls(**config, norm_layer=partial(nn.LayerNorm, eps=W.LN_EPS), norm_pix_loss=args.norm_pix_loss)
    model.to(device)
    model_without_ddp = model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    eff_batch_size = args.batch_size * args.accum_iter * misc.get_world_size()
    if args.lr is None:  # only base_lr is specified
        args.lr = args.blr * eff_batch_size / 256
    assert not args.distributed
    # following timm: set wd as 0 for bias and norm layers
    param_groups = optim_factory.add_weight_decay(model_without_ddp, args.weight_decay)
    optimizer = torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95))
    loss_scaler = mods["NativeScaler"]()
    assert not loss_scaler._scaler.is_enabled(), "a GPU is visible: run make_mae.py as a script (it hides them)"
    # main_pretrain.py's call, a no-op here: it unpickles a checkpoint (a full torch.load) only with --resume.
    assert not args.resume, "make_mae.py never resumes: misc.load_model would unpickle args.resume"
    misc.load_model(args=args, model_without_ddp=model_without_ddp, optimizer=optimizer, loss_scaler=loss_scaler)

    # ---- the masking noise (patch) and the observation
    feed = NoiseFeed(noise)
    models_mae.torch = O.Proxy(torch, rand=feed)
    names = {id(p): n for n, p in model.named_parameters()}
    steps: list[dict] = [{} for _ in range(args.epochs * STEPS_PER_EPOCH)]
    checksums: dict[str, dict] = {}
    current = {"it": 0}

    def forward_hook(module, inputs, output):
        loss, pred, mask = output
        it = current["it"]
        keep = D.keep_order(noise[it], args.mask_ratio)
        expected = torch.ones_like(mask)
        expected.scatter_(1, keep, 0.0)
        assert torch.equal(mask, expected), it  # the official mask is the one the noise gives
        steps[it].update({"step": it, "epoch": it // STEPS_PER_EPOCH, "loss": loss.detach().item(),
                          "pred": pair(pred), "masked_per_image": [int(m) for m in mask.sum(1)]})

    model.register_forward_hook(forward_hook)

    def record_norm(norm):
        steps[current["it"]]["grad_norm"] = float(norm)

    def snapshot() -> dict:
        state = dict(model.named_parameters())
        out = {n: pair(state[n]) for n in TENSORS}
        out["all_parameters"] = [sum(pair(p)[0] for p in state.values()), sum(pair(p)[1] for p in state.values())]
        return out

    def before_step(it: int) -> None:
        current["it"] = feed.step = it

    def after_step(it: int) -> None:
        assert feed.calls[it] == 1
        steps[it].update({
            "lr": [float(g["lr"]) for g in optimizer.param_groups],
            "weight_decay": [float(g["weight_decay"]) for g in optimizer.param_groups],
        })
        if it in CHECKSUM_STEPS:
            checksums[str(it)] = snapshot()

    checksums["initial"] = snapshot()
    scaler = RecordingScaler(loss_scaler, record_norm)
    for epoch in range(args.start_epoch, args.epochs):
        engine.train_one_epoch(model, Loader(epoch, batches, before_step, after_step), optimizer, device, epoch,
                               scaler, log_writer=None, args=args)
    assert current["it"] == args.epochs * STEPS_PER_EPOCH - 1 and all(c == 1 for c in feed.calls)

    groups_1x = param_groups_weight_decay(model_without_ddp, args.weight_decay)
    same_1x = [[id(p) for p in g["params"]] for g in groups_1x] == \
        [[id(p) for p in g["params"]] for g in optimizer.param_groups]
    defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in optimizer.defaults.items()
                if isinstance(v, (bool, int, float, tuple, type(None)))}
    return {
        "initial": initial,
        "lr": args.lr,
        "param_groups": [{"weight_decay": g["weight_decay"], "params": [names[id(p)] for p in g["params"]]}
                         for g in optimizer.param_groups],
        "not_trained": [n for n, p in model.named_parameters() if not p.requires_grad],
        "timm1_param_groups_weight_decay_same": same_1x,
        "optimizer": {"class": type(optimizer).__name__, "defaults": defaults},
        "loss_scaler": {"class": type(loss_scaler).__name__, "grad_scaler_enabled": loss_scaler._scaler.is_enabled()},
        "steps": steps,
        "checksums": checksums,
    }


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = O.command_line(__doc__.split("\n\n")[0], "facebookresearch/mae", HERE / "fixtures" / "mae_official.json")
    parser.add_argument("--timm032", type=Path, default=None,
                        help="run on the genuine timm 0.3.2 from this directory instead of mae_timm_shim's")
    cli = parser.parse_args()
    repo = cli.official.resolve()
    torch.set_num_threads(cli.threads)
    for message in (r".*torch\.cuda\.amp\..*is deprecated", r"CUDA is not available",
                    r".*torch\.cuda\.amp\.GradScaler is enabled, but CUDA is not available",
                    r".*Importing from timm\..* is deprecated", r".*torch\.jit\.script.* is deprecated"):
        warnings.filterwarnings("ignore", message=message)
    started = time.time()

    spec = D.make_spec(VIEW_SEED)
    images, _ = V.load_train_images(cli.data_root)
    batches = [D.render(spec, step, images) for step in range(D.STEPS)]
    noise = D.mask_noise(MASK_SEED)
    torch.set_default_dtype(torch.float64)
    reference = W.initial_weights(SEED)

    import timm as installed_timm
    if cli.timm032 is None:
        timm_modules, backend = S.shim_modules(), "mae_timm_shim (timm 0.3.2's API on the installed timm)"
    else:
        timm_modules, backend = S.genuine_modules(cli.timm032), "timm 0.3.2 (genuine, --timm032)"

    fixture: dict = {
        "about": "Reference trajectory of the official MAE pre-training step, tiny, CPU, float64: "
                 "tests/parity/make_mae.py (see tests/parity/README.md).",
        "official": {"repository": "facebookresearch/mae", "commit": O.commit_of(repo), "license": "CC-BY-NC 4.0",
                     "files": list(OFFICIAL_FILES)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__, "timm_installed": installed_timm.__version__,
                        "timm_used_by_official_code": backend,
                        "torchvision": importlib.import_module("torchvision").__version__,
                        "torch_threads": torch.get_num_threads(), "cuda_visible": torch.cuda.is_available()},
        "settings": {
            "steps_per_epoch": STEPS_PER_EPOCH, "epochs": EPOCHS, "dtype": "float64",
            "view_seed": VIEW_SEED, "mask_seed": MASK_SEED, "weight_seed": SEED,
            "checksum_steps": list(CHECKSUM_STEPS),
            "checksums": "[sum, sum of squares] in float64; checksums[k] is the state after step k "
                         "(optimizer step done), 'initial' before step 0",
            "model": {**W.MODEL, "norm_layer": "partial(nn.LayerNorm, eps=1e-6)", "qkv_bias": True,
                      "qk_scale": None, "num_patches": W.NUM_PATCHES},
        },
    }

    with tempfile.TemporaryDirectory(prefix="clrun-parity-") as tmp, S.installed(timm_modules), O.official(repo):
        main_pretrain = importlib.import_module("main_pretrain")
        misc = importlib.import_module("util.misc")
        pos_embed = importlib.import_module("util.pos_embed")
        pos_embed.np = O.Proxy(np, float=float)  # np.float, removed in numpy 1.24, was the builtin float
        engine = importlib.import_module("engine_pretrain")
        engine.torch = O.Proxy(torch, cuda=O.Proxy(torch.cuda, synchronize=lambda device=None: None))
        models_mae = importlib.import_module("models_mae")
        mods = {"models_mae": models_mae, "engine": engine, "misc": misc,
                "optim_factory": main_pretrain.optim_factory, "NativeScaler": main_pretrain.NativeScaler}
        assert main_pretrain.timm.__version__ == "0.3.2"
        official_parser = argparse.ArgumentParser("MAE pre-training", parents=[main_pretrain.get_args_parser()])
        command = flags(tmp)
        args = official_parser.parse_args(command)
        fixture["official"]["flags"] = [f if f != tmp else "(temporary folder)" for f in command]
        fixture["official"]["patchify"] = check_patchify(models_mae, channel_generic(models_mae))
        log = io.StringIO()
        with contextlib.redirect_stdout(sys.stdout if cli.verbose else log):
            result = run(mods, args, batches, noise)

    initial = result.pop("initial")
    fixture["settings"]["lr"] = {"blr": args.blr, "effective_batch": D.BATCH, "lr": result.pop("lr"),
                                 "min_lr": args.min_lr, "warmup_epochs": args.warmup_epochs,
                                 "formula": "util/lr_sched.py at epoch + step/10, set before each step"}
    fixture["settings"]["mask"] = {"ratio": args.mask_ratio, "len_keep": D.len_keep(), "masked": W.NUM_PATCHES -
                                   D.len_keep(), "noise": "mae_data.mask_noise(mask_seed)"}
    fixture["views"] = {**V.spec_to_json(spec), "batch_checksums": [pair(b) for b in batches]}
    fixture["masks"] = {
        "noise_checksums": [pair(torch.from_numpy(n)) for n in noise],
        "ids_keep": [D.keep_order(n, args.mask_ratio).tolist() for n in noise],
    }
    fixture["initial_weights"] = {name: pair(t) for name, t in initial.items()}
    fixture["initial_weights_reimplementation"] = {"function": "mae_weights.initial_weights(weight_seed)",
                                                   **W.compare(reference, initial)}
    assert fixture["initial_weights_reimplementation"]["bitwise_equal"], "mae_weights.initial_weights drifted"
    fixture.update(result)

    size = O.write_fixture(cli.out, fixture)
    print(f"wrote {cli.out} ({size / 1024:.1f} kB) in {time.time() - started:.1f} s; official commit "
          f"{fixture['official']['commit']}; timm: {backend}")
    losses = [s["loss"] for s in fixture["steps"]]
    print(f"  losses {losses[:3]} ... {losses[-3:]}")


if __name__ == "__main__":
    main()
