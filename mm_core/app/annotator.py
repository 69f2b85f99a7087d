"""The box annotator, with a clear refusal for box values it cannot take.

``gradio_bbox_annotator`` validates its value against a strict model before any handler
runs, so a malformed value sent through the API (a box corner that is text, a box
without corners, boxes that are not a list) ended as Gradio's generic "an exception was
raised" instead of a message. :func:`checked_boxes` makes one annotator take any
``annotations`` value in and check it itself, with one message naming what a box needs.
(An instance is changed, not subclassed: Gradio finds a custom component's page code
next to the module of its class.)
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.data_classes import FileData, GradioModel
from gradio_bbox_annotator.bbox_annotator import AnnotatedImage

#: The refusal of a box value that cannot be used.
BAD_BOXES = ("the boxes cannot be used: each box needs whole-number left, top, right and bottom "
             "corners in pixels (and a label)")


class AnyAnnotations(GradioModel):
    """The annotator's value as received: the image, and annotations checked later."""

    image: FileData
    annotations: Any = None


def checked_boxes(annotator):
    """``annotator`` (a ``BBoxAnnotator``) refusing malformed boxes with :data:`BAD_BOXES`."""
    original = annotator.preprocess

    def preprocess(payload):
        if isinstance(payload, AnyAnnotations):
            try:
                payload = AnnotatedImage(image=payload.image, annotations=payload.annotations or [])
            except Exception:  # noqa: BLE001 - pydantic's errors name internals; ours names the boxes
                raise gr.Error(BAD_BOXES, title="Input refused") from None
        return original(payload)

    annotator.data_model = AnyAnnotations
    annotator.preprocess = preprocess
    return annotator
