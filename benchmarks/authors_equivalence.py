"""Our authors'-head modules against the upstream modules, on random weights: max |difference|.

Rows (each skipped with a message when its reference is not importable):

- ViT regressor vs ``cellpose==4.0.6`` ``cellpose.vit_sam.Transformer`` (ViT-L, 256-pixel tile), without
  and with the authors' feature injection (applied to the reference by a patch-embedding hook);
- tracker vs ``trackastra==0.5.6`` ``trackastra.model.model.TrackingTransformer`` (the authors'
  configuration), without and with ``attn_feat`` (added to the reference after ``proj`` by a hook),
  and the quiet-softmax normalisation;
- LOCA vs the LOCA reference code (``djukicn/loca``, MIT) when a checkout of it is given with
  ``--loca DIR`` (LOCA is not on PyPI). Where torchvision does not import, the reference's
  torchvision calls (``resnet50``, ``FrozenBatchNorm2d``, ``roi_align``) are served by our modules,
  so the row checks everything after them (our RoIAlign is checked against an independent
  reference in ``tests/test_authors_modules.py``); with a real torchvision they are its own
  (``resnet50`` without pretrained weights: no download).

The references need torchvision, which cannot be in our requirements, so install them outside the
repository and point ``--refs`` there::

    pip install --no-deps --target /tmp/refpkgs cellpose==4.0.6 trackastra==0.5.6 segment_anything==1.0
    python benchmarks/authors_equivalence.py --refs /tmp/refpkgs [--loca /path/to/loca]

``torchvision`` is replaced by a stub in ``sys.modules`` when it does not import (the compared
classes never call it). Weights are copied ours -> theirs by state dict (strict), inputs are shared.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_core.heads.authors.loca import LOCA
from mm_core.heads.authors.resnet import FrozenBatchNorm2d, ResNet50
from mm_core.engines.roi_align import roi_align
from mm_core.heads.authors.tracker import AUTHORS_CONFIG, TrackingTransformer
from mm_core.heads.authors.vit import CellposeViT

TV_MODULES = ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.ops.misc",
              "torchvision.transforms", "torchvision.transforms.functional", "torchvision.models")


def stub_torchvision() -> bool:
    """Put a stub ``torchvision`` in ``sys.modules`` when the real one does not import."""
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:  # noqa: BLE001, S110 - missing or broken wheel: stub it below
        pass
    for name in TV_MODULES:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        mod.__path__ = []

        def missing(attr, _name=name):
            if attr.startswith("__"):
                raise AttributeError(attr)

            def fail(*args, **kwargs):
                raise RuntimeError(f"{_name}.{attr} is a stub: torchvision does not import here")
            return fail
        mod.__getattr__ = missing
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
    return True


def randomize(module: nn.Module, seed: int) -> None:
    """Default init for weights; tables, norms and BN statistics made non-trivial (so they matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            noise = torch.randn(t.shape, generator=g)
            leaf = name.rsplit(".", 1)[-1]
            if "rel_pos" in leaf or leaf == "pos_embed":
                t.copy_(0.02 * noise)
            elif leaf == "running_var":
                t.copy_(1 + 0.1 * noise.abs())
            elif leaf in ("running_mean",) or (leaf == "bias" and t.ndim == 1 and "norm" in name):
                t.copy_(0.1 * noise)
            elif leaf == "weight" and ("norm" in name or ".bn" in name or name.endswith(("neck.1.weight",
                                                                                       "neck.3.weight"))):
                t.copy_(1 + 0.1 * noise)
            elif ".freqs." in name:
                t.mul_(1 + 0.1 * noise)


def report(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    print(f"{name:<44} max|diff| = {diff:.3e}   (max|ref| = {scale:.3e}, shape {list(ref.shape)})", flush=True)


def vit_rows() -> None:
    try:
        from cellpose.vit_sam import Transformer
    except Exception as exc:  # noqa: BLE001
        print(f"ViT vs cellpose 4.0.6: skipped (cellpose.vit_sam not importable: {exc})")
        return
    torch.manual_seed(10)  # each row reproducible on its own
    ours = CellposeViT().eval()
    randomize(ours, 1)
    ref = Transformer().eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    g = torch.Generator().manual_seed(2)
    x, feat = torch.randn(1, 3, 256, 256, generator=g), torch.randn(1, 3, 256, 256, generator=g)
    with torch.no_grad():
        report("ViT-L regressor vs cellpose vit_sam", ours(x), ref(x)[0])
        embed = ref.encoder.patch_embed

        def inject(_module, _inputs, out):
            extra = embed.proj(feat).permute(0, 2, 3, 1)
            return out + out * extra * 0.5
        hook = embed.register_forward_hook(inject)
        try:
            report("ViT-L regressor + feat vs cellpose (+hook)", ours(x, feat), ref(x)[0])
        finally:
            hook.remove()


def _import_trackastra_model():
    """``trackastra.model.model`` without running ``trackastra.model``'s heavy ``__init__``."""
    import trackastra

    pkg_dir = Path(trackastra.__file__).parent / "model"
    pkg = types.ModuleType("trackastra.model")
    pkg.__path__ = [str(pkg_dir)]
    pkg.__spec__ = importlib.machinery.ModuleSpec("trackastra.model", None, is_package=True)
    sys.modules.setdefault("trackastra.model", pkg)
    from trackastra.model import model
    return model


def tracker_rows() -> None:
    try:
        ref_cls = _import_trackastra_model().TrackingTransformer
    except Exception as exc:  # noqa: BLE001
        print(f"tracker vs trackastra 0.5.6: skipped (not importable: {exc})")
        return
    torch.manual_seed(11)  # each row reproducible on its own
    ours = TrackingTransformer().eval()
    randomize(ours, 3)
    ref = ref_cls(**AUTHORS_CONFIG, dropout=0.0, attn_positional_bias="rope", attn_positional_bias_n_spatial=16,
                  attn_dist_mode="v0").eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    g = torch.Generator().manual_seed(4)
    n = 48
    t = torch.randint(0, 4, (1, n), generator=g).sort().values
    coords = torch.cat([t[..., None].float() + 7, torch.rand(1, n, 2, generator=g) * 400], dim=-1)
    feats = torch.randn(1, n, 7, generator=g)
    pad = torch.zeros(1, n, dtype=torch.bool)
    pad[0, -5:] = True
    attn_feat = torch.randn(1, n, 320, generator=g)
    with torch.no_grad():
        a_ours, a_ref = ours(coords, feats, pad), ref(coords, feats, pad)
        report("tracker logits vs trackastra", a_ours, a_ref)
        hook = ref.proj.register_forward_hook(lambda _m, _i, out: out + attn_feat)
        try:
            report("tracker logits + attn_feat vs trackastra (+hook)", ours(coords, feats, pad, attn_feat),
                   ref(coords, feats, pad))
        finally:
            hook.remove()
        report("quiet-softmax association vs trackastra", ours.normalize_output(a_ours, t, coords),
               ref.normalize_output(a_ref, t, coords))


def _loca_torchvision() -> str:
    """Make the reference's torchvision calls work offline; says what serves them.

    With a real torchvision: its ``resnet50`` without pretrained weights (no download), its
    ``roi_align``. With the stub: our ``ResNet50``, ``FrozenBatchNorm2d`` and ``roi_align``.
    """
    tv = sys.modules["torchvision"]
    if getattr(tv, "__file__", None):
        from torchvision import models

        real = models.resnet50

        def resnet50(replace_stride_with_dilation=None, pretrained=False, norm_layer=None):
            return real(weights=None, replace_stride_with_dilation=replace_stride_with_dilation,
                        norm_layer=norm_layer)
        models.resnet50 = resnet50
        return "torchvision's resnet50 and roi_align"

    def resnet50(replace_stride_with_dilation=None, pretrained=False, norm_layer=None):
        return ResNet50()
    sys.modules["torchvision.models"].resnet50 = resnet50
    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    sys.modules["torchvision.ops"].roi_align = roi_align
    return "our ResNet50 and roi_align standing in for torchvision's"


def loca_rows(loca_dir: str | None) -> None:
    if not loca_dir or not (Path(loca_dir) / "models" / "loca.py").is_file():
        print("LOCA vs djukicn/loca: skipped (LOCA is not on PyPI; give a checkout of github.com/djukicn/loca "
              "with --loca DIR)")
        return
    print(f"LOCA reference: {loca_dir}, with {_loca_torchvision()}")
    sys.path.insert(0, str(Path(loca_dir)))
    from models.loca import LOCA as RefLOCA

    torch.manual_seed(12)  # each row reproducible on its own
    ours = LOCA().eval()
    randomize(ours, 5)
    ref = RefLOCA(image_size=512, num_encoder_layers=3, num_ope_iterative_steps=3, num_objects=3, emb_dim=256,
                  num_heads=8, kernel_dim=3, backbone_name="resnet50", swav_backbone=False, train_backbone=False,
                  reduction=8, dropout=0.1, layer_norm_eps=1e-5, mlp_factor=8, norm_first=True,
                  activation=nn.GELU, norm=True, zero_shot=False).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith(("attn_norm.", "fuse."))}
    ref.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 512, 512, generator=g)
    boxes = torch.tensor([[[40.0, 52.5, 90.0, 101.0], [300.2, 310.0, 333.0, 350.7], [200.0, 20.0, 260.0, 47.0]]])
    seen = {}
    ref.regression_head.register_forward_pre_hook(lambda _m, args: seen.setdefault("response", args[0]))
    with torch.no_grad():
        (d_ours, aux_ours), (d_ref, aux_ref) = ours(x, boxes), ref(x, boxes)
        response = ours.forward_before_reg(x, boxes)[-1]
    report("LOCA final response map vs djukicn/loca", response, seen["response"])
    report("LOCA density vs djukicn/loca", d_ours, d_ref)
    for i, (a, b) in enumerate(zip(aux_ours, aux_ref)):
        report(f"LOCA aux density {i} vs djukicn/loca", a, b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refs", default="/tmp/refpkgs", help="folder holding cellpose, trackastra, segment_anything")
    parser.add_argument("--loca", default=None, help="checkout of github.com/djukicn/loca (folder with models/)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="vit,tracker,loca", help="comma-separated subset of vit,tracker,loca")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if Path(args.refs).is_dir():
        sys.path.insert(0, str(Path(args.refs)))
    else:
        print(f"note: --refs {args.refs} is not a folder; using whatever is importable")
    if stub_torchvision():
        print("note: torchvision does not import here; a stub stands in for it")
    print(f"torch {torch.__version__}, float32, CPU, {args.threads} thread(s)")
    rows = set(args.rows.split(","))
    if "vit" in rows:
        vit_rows()
    if "tracker" in rows:
        tracker_rows()
    if "loca" in rows:
        loca_rows(args.loca)
    return 0


if __name__ == "__main__":
    sys.exit(main())
