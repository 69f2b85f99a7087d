"""Trainable task heads on frozen match maps (see ``python -m mm_core.train``).

- :class:`SegmentationHead`: fusion stem + small windowed/global ViT -> foreground,
  distance and boundary maps -> watershed instances;
- :class:`CountingHead`: density regressor, count = sum of the density;
- :class:`GeneralistHead`: one U-Net for segmentation and counting with its own object-size
  search (both modes; see docs/training.md, the generalist head);
- :class:`SizeModel`: the typical object diameter of an image, from its scale profile
  (the generalist head's size search starts there in automatic mode);
- :class:`LinkingHead`: association probabilities between consecutive frames'
  objects -> tracks with divisions (CTC);
- :func:`exemplar_attention_loss`: the LDM exemplar projector's objective.

Use :func:`load_head` (folder, shipped name or ``hub:owner/name``); every head has
``predict(maps, image)`` and ``describe()``. Which head serves a task by default:
:mod:`mm_core.heads.registry`.
"""

from mm_core.heads.learned.base import LearnedHead, load_head
from mm_core.heads.learned.cellmatch import CellMatchHead
from mm_core.heads.learned.checkpoints import available_heads
from mm_core.heads.learned.counting import CountingHead
from mm_core.heads.learned.exemplar import exemplar_attention_loss
from mm_core.heads.learned.generalist import GeneralistHead
from mm_core.heads.learned.segmentation import SegmentationHead
from mm_core.heads.learned.size import SizeModel
from mm_core.heads.learned.tracking import LinkingHead, links_from_probabilities

__all__ = [
           "CellMatchHead",
           "CountingHead",
           "GeneralistHead",
           "LearnedHead",
           "LinkingHead",
           "SegmentationHead",
           "SizeModel",
           "available_heads",
           "exemplar_attention_loss",
           "links_from_probabilities",
           "load_head",
]
