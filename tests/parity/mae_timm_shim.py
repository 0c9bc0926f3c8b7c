"""timm 0.3.2's API, as facebookresearch/mae uses it, built on the installed timm 1.x; and ``torch._six``.

The official MAE code pins timm 0.3.2 (main_pretrain.py: ``assert timm.__version__ == "0.3.2"``), which does not
import on today's torch (``from torch._six import container_abcs``; ``torch._six`` is gone since torch 2.0), and
its util/misc.py does ``from torch._six import inf``. From timm it uses only:

* ``timm.models.vision_transformer.PatchEmbed(img_size, patch_size, in_chans, embed_dim)`` (models_mae.py);
* ``timm.models.vision_transformer.Block(dim, num_heads, mlp_ratio, qkv_bias=True, qk_scale=None,
  norm_layer=norm_layer)`` (models_mae.py; ``qk_scale`` is gone from timm 1.x);
* ``timm.optim.optim_factory.add_weight_decay(model, weight_decay)`` (main_pretrain.py; gone from timm 1.x, whose
  ``param_groups_weight_decay`` has the same rule but drops empty groups).

``shim_modules()`` provides these as modules for ``sys.modules`` (``timm``, ``timm.models``,
``timm.models.vision_transformer``, ``timm.optim``, ``timm.optim.optim_factory``; ``timm.__version__`` is
"0.3.2", the API it provides, and ``timm.__shim__`` says what it is), with timm 0.3.2's semantics:

* ``PatchEmbed``: timm 1.x's ``PatchEmbed`` with 0.3.2's four arguments: a ``Conv2d(in_chans, embed_dim,
  patch, stride patch)``, then ``flatten(2).transpose(1, 2)``, a strict image size, ``patch_size`` and
  ``img_size`` as pairs, ``num_patches``; the same module and parameter names (``proj.weight``, ``proj.bias``).
* ``Block``: timm 1.x's ``Block`` (pre-norm, ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``; Mlp ``fc1``, GELU,
  ``fc2``; no layer scale, no drop path at rate 0) with 0.3.2's signature (``drop`` is timm 1.x's
  ``proj_drop``, used for the attention projection and the MLP as in 0.3.2) and an ``Attention`` whose forward
  is 0.3.2's, operation for operation: ``(q @ k^T) * scale`` (timm 1.x scales q first, or calls
  ``scaled_dot_product_attention``: the same function, other rounding), ``scale = qk_scale or head_dim ** -0.5``.
  The Linears are made in 0.3.2's order with the same shapes (``attn.qkv``, ``attn.proj``, ``mlp.fc1``,
  ``mlp.fc2``), so the random draws at construction, the parameter names and their order are 0.3.2's.
* ``add_weight_decay``: 0.3.2's function: trainable parameters that are 1-D or named ``*.bias`` (or in
  ``skip_list``) go to ``{'params': no_decay, 'weight_decay': 0.}``, the others to
  ``{'params': decay, 'weight_decay': weight_decay}``, in that order, both groups always present.

``python tests/parity/mae_timm_shim.py --timm032 DIR`` checks all this against the genuine timm 0.3.2 (DIR: where
``pip install --no-deps --target DIR timm==0.3.2`` put it; it imports with ``torch_six()`` in sys.modules):
same initial weights from the same seed, same forward and gradients bit for bit, same parameter groups; and
prints how far timm 1.x's own ``Block`` (fused and not) is from 0.3.2's on the same weights.
``make_mae.py --timm032 DIR`` runs the whole trajectory on the genuine 0.3.2 instead of the shim.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import importlib
import math
import sys
import types
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

_NAMES = ("timm", "timm.models", "timm.models.vision_transformer", "timm.optim", "timm.optim.optim_factory")


def torch_six() -> types.ModuleType:
    """What the official code (``inf``) and timm 0.3.2 (``container_abcs``) import from the old ``torch._six``."""
    six = types.ModuleType("torch._six", "torch._six as torch 1.x had it, for timm 0.3.2 and MAE's util/misc.py")
    six.inf = math.inf
    six.container_abcs = collections.abc
    six.string_classes = (str, bytes)
    six.int_classes = int
    return six


def shim_modules() -> dict[str, types.ModuleType]:
    """The modules of a ``timm`` with 0.3.2's API (PatchEmbed, Block, add_weight_decay), on timm 1.x."""
    import timm as real
    from timm.layers import Mlp
    from timm.layers import PatchEmbed as PatchEmbed1
    from timm.layers.attention import Attention as Attention1
    from timm.models.vision_transformer import Block as Block1

    class Attention(Attention1):
        """timm 1.x's Attention (same parameters) computing 0.3.2's forward (vision_transformer.py), verbatim."""

        def forward(self, x, attn_mask=None, is_causal=False):
            assert attn_mask is None and not is_causal and self.gate is None
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]

            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)

            x = (attn @ v).transpose(1, 2).reshape(B, N, C)
            x = self.proj(x)
            x = self.proj_drop(x)
            return x

    class Block(Block1):
        """timm 0.3.2's ``Block(dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_scale=None, drop=0.,
        attn_drop=0., drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm)`` on timm 1.x's Block."""

        def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_scale=None, drop=0., attn_drop=0.,
                     drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm):
            super().__init__(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop,
                             attn_drop=attn_drop, drop_path=drop_path, act_layer=act_layer, norm_layer=norm_layer,
                             mlp_layer=Mlp, attn_layer=Attention)
            self.attn.scale = qk_scale or (dim // num_heads) ** -0.5

    class PatchEmbed(PatchEmbed1):
        """timm 0.3.2's ``PatchEmbed(img_size=224, patch_size=16, in_chans=3, embed_dim=768)`` on timm 1.x's."""

        def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
            super().__init__(img_size, patch_size, in_chans, embed_dim)

    def add_weight_decay(model, weight_decay=1e-5, skip_list=()):
        """timm 0.3.2's optim_factory.add_weight_decay."""
        decay = []
        no_decay = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue  # frozen weights
            if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
                no_decay.append(param)
            else:
                decay.append(param)
        return [
            {'params': no_decay, 'weight_decay': 0.},
            {'params': decay, 'weight_decay': weight_decay}]

    for cls in (Attention, Block, PatchEmbed):
        cls.__module__ = "timm.models.vision_transformer"
    add_weight_decay.__module__ = "timm.optim.optim_factory"

    mods = {n: types.ModuleType(n) for n in _NAMES}
    top = mods["timm"]
    top.__version__ = "0.3.2"
    top.__shim__ = f"timm 0.3.2's PatchEmbed, Block, add_weight_decay on timm {real.__version__} (mae_timm_shim.py)"
    top.__path__ = []  # a package: any other timm submodule is missing on purpose
    top.models, top.optim = mods["timm.models"], mods["timm.optim"]
    mods["timm.models"].vision_transformer = vt = mods["timm.models.vision_transformer"]
    mods["timm.optim"].optim_factory = of = mods["timm.optim.optim_factory"]
    vt.PatchEmbed, vt.Block, vt.Attention, vt.Mlp = PatchEmbed, Block, Attention, Mlp
    of.add_weight_decay = add_weight_decay
    for m in mods.values():
        m.__file__ = __file__
    return mods


def _is_timm(name: str) -> bool:
    return name == "timm" or name.startswith("timm.")


@contextlib.contextmanager
def installed(modules: dict[str, types.ModuleType]):
    """``modules`` (a timm) and ``torch._six`` in sys.modules while inside; then sys.modules' timm as before."""
    import timm  # noqa: F401  (the installed timm: restored afterwards)

    saved = {n: m for n, m in sys.modules.items() if _is_timm(n) or n == "torch._six"}
    try:
        for n in list(sys.modules):
            if _is_timm(n):
                del sys.modules[n]
        sys.modules["torch._six"] = torch_six()
        sys.modules.update(modules)
        yield modules.get("timm")
    finally:
        for n in list(sys.modules):
            if _is_timm(n) or n == "torch._six":
                del sys.modules[n]
        sys.modules.update(saved)


def genuine_modules(directory: Path) -> dict[str, types.ModuleType]:
    """The genuine timm 0.3.2 from ``directory`` (all its modules), imported with ``torch._six`` present."""
    directory = Path(directory).resolve()
    with installed({}):
        sys.path.insert(0, str(directory))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.script deprecation at import
                timm = importlib.import_module("timm")
                importlib.import_module("timm.models.vision_transformer")
                importlib.import_module("timm.optim.optim_factory")
        finally:
            sys.path.remove(str(directory))
        assert timm.__version__ == "0.3.2", timm.__version__
        assert Path(timm.__file__).resolve().is_relative_to(directory), timm.__file__
        return {n: m for n, m in sys.modules.items() if _is_timm(n)}


# ------------------------------------------------------------------------------------------- the comparison
def compare(genuine: dict[str, types.ModuleType], seed: int = 0) -> dict:
    """Shim vs genuine 0.3.2 (and timm 1.x's own Block vs 0.3.2), float64, MAE's configuration."""
    from timm.models.vision_transformer import Block as Block1

    shim = shim_modules()
    norm = partial(nn.LayerNorm, eps=1e-6)
    out: dict = {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for label, dim, heads, tokens in (("encoder_block", 64, 2, 13), ("decoder_block", 32, 2, 50)):
            blocks = {}
            for name, mods in (("shim", shim), ("timm_0.3.2", genuine)):
                torch.manual_seed(seed)
                blocks[name] = mods["timm.models.vision_transformer"].Block(
                    dim, heads, 4., qkv_bias=True, qk_scale=None, norm_layer=norm)
            a, b = blocks["shim"], blocks["timm_0.3.2"]
            sa, sb = a.state_dict(), b.state_dict()
            g = torch.Generator().manual_seed(seed + 1)
            x = torch.randn(8, tokens, dim, generator=g)
            r = torch.randn(8, tokens, dim, generator=g)
            ya, yb = a(x), b(x)
            (ya * r).sum().backward()
            (yb * r).sum().backward()
            res = {
                "state_dict_names_equal": list(sa) == list(sb),
                "initial_weights_bitwise_equal": all(torch.equal(sa[k], sb[k]) for k in sa),
                "forward_bitwise_equal": torch.equal(ya, yb),
                "forward_max_abs_diff": float((ya - yb).detach().abs().max()),
                "grads_bitwise_equal": all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters())),
                "scale": [a.attn.scale, b.attn.scale],
            }
            # timm 1.x's own Block on the same weights: the same function, other rounding
            for fused in (True, False):
                native = Block1(dim, heads, 4., qkv_bias=True, norm_layer=norm)
                native.load_state_dict(sb)
                native.attn.fused_attn = fused
                with torch.no_grad():
                    res[f"timm1_block_{'fused' if fused else 'unfused'}_max_abs_diff"] = float(
                        (native(x) - yb).abs().max())
            res["max_abs_output"] = float(yb.detach().abs().max())
            out[label] = res
        pe = {}
        for name, mods in (("shim", shim), ("timm_0.3.2", genuine)):
            torch.manual_seed(seed)
            pe[name] = mods["timm.models.vision_transformer"].PatchEmbed(28, 4, 1, 64)
        x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(seed + 2))
        out["patch_embed"] = {
            "initial_weights_bitwise_equal": all(torch.equal(p, q) for p, q in
                                                 zip(pe["shim"].state_dict().values(),
                                                     pe["timm_0.3.2"].state_dict().values())),
            "forward_bitwise_equal": torch.equal(pe["shim"](x), pe["timm_0.3.2"](x)),
            "attributes_equal": all(getattr(pe["shim"], k) == getattr(pe["timm_0.3.2"], k)
                                    for k in ("img_size", "patch_size", "num_patches")),
        }
        model = nn.Sequential(pe["shim"], blocks["shim"])
        groups = [shim["timm.optim.optim_factory"].add_weight_decay(model, 0.05),
                  genuine["timm.optim.optim_factory"].add_weight_decay(model, 0.05)]
        out["add_weight_decay_equal"] = (
            [[id(p) for p in g["params"]] for g in groups[0]] == [[id(p) for p in g["params"]] for g in groups[1]]
            and [g["weight_decay"] for g in groups[0]] == [g["weight_decay"] for g in groups[1]])
    finally:
        torch.set_default_dtype(previous)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm032", type=Path, required=True,
                        help="a directory holding timm 0.3.2 (pip install --no-deps --target DIR timm==0.3.2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, value in compare(genuine_modules(args.timm032)).items():
        print(name, value)


if __name__ == "__main__":
    main()
