"""The box annotator, with a clear refusal for box values it cannot take.

``gradio_bbox_annotator`` validates its value against a strict model before any handler
runs, so a malformed value sent through the API (a box corner that is text, a box
without corners, boxes that are not a list) ended as Gradio's generic "an exception was
raised" instead of a message. :class:`CheckedAnnotator` takes any ``annotations`` value
in and checks it itself, with one message naming what a box needs.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.data_classes import FileData, GradioModel
from gradio_bbox_annotator import BBoxAnnotator
from gradio_bbox_annotator.bbox_annotator import AnnotatedImage

#: The refusal of a box value that cannot be used.
BAD_BOXES = ("the boxes cannot be used: each box needs whole-number left, top, right and bottom "
             "corners in pixels (and a label)")


class AnyAnnotations(GradioModel):
    """The annotator's value as received: the image, and annotations checked later."""

    image: FileData
    annotations: Any = None

from gradio.events import Dependency

class CheckedAnnotator(BBoxAnnotator):
    """:class:`BBoxAnnotator` that refuses malformed boxes with :data:`BAD_BOXES`."""

    data_model = AnyAnnotations

    def preprocess(self, payload):
        """Check the boxes, then as :meth:`BBoxAnnotator.preprocess`."""
        if isinstance(payload, AnyAnnotations):
            try:
                payload = AnnotatedImage(image=payload.image, annotations=payload.annotations or [])
            except Exception:  # noqa: BLE001 - pydantic's errors name internals; ours names the boxes
                raise gr.Error(BAD_BOXES, title="Input refused") from None
        return super().preprocess(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component