"""The LDM engine: frozen Stable Diffusion v1.4 attention matching (see :mod:`.engine`).

Point it at the weights with ``MM_SD_MODEL`` (a local diffusers folder or a hub id
already in the Hugging Face cache); :func:`availability` says, without downloading
anything (and without importing diffusers), whether ``choose_engine("auto")`` may pick it.

Modules: :mod:`.loading` (weights), :mod:`.attention` (capture processors,
self-cross), :mod:`.conditioning` (template, task token, exemplar slots),
:mod:`.projector` (ResNet-50 + RoIAlign + conv + linear), :mod:`.maps` (scale,
centres), :mod:`.tiling` (tiled matching over :mod:`mm_core.transforms.tiles`), :mod:`.engine` (:class:`LDMEngine`).
"""

from __future__ import annotations

import importlib

from mm_core.engines.ldm.loading import (
    DEFAULT_MODEL_ID,
    SDComponents,
    availability,
    download_weights,
    load_components,
    resolve_model_id,
    weights_present,
)

_LAZY = {
    "LDMEngine": "engine",
    "AttentionStore": "attention", "CaptureAttnProcessor": "attention", "box_self_attention": "attention",
    "install_capture": "attention", "plain_sdpa": "attention", "self_cross": "attention",
    "TASK_TOKEN": "conditioning", "TEMPLATE": "conditioning", "encode_text": "conditioning",
    "insert_slots": "conditioning",
    "ExemplarProjector": "projector", "load_backbone": "projector", "roi_align": "projector",
}


def __getattr__(name: str):
    """Import diffusers-dependent parts on first use (keeps :func:`availability` light)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL_ID",
    "TASK_TOKEN",
    "TEMPLATE",
    "AttentionStore",
    "CaptureAttnProcessor",
    "ExemplarProjector",
    "LDMEngine",
    "SDComponents",
    "availability",
    "box_self_attention",
    "download_weights",
    "encode_text",
    "insert_slots",
    "install_capture",
    "load_backbone",
    "load_components",
    "plain_sdpa",
    "resolve_model_id",
    "roi_align",
    "self_cross",
    "weights_present",
]
