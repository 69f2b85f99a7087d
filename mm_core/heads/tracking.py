"""Tracking heads: link per-frame instance labels into tracks (CTC terms).

The per-frame loop (match frame ``t`` with frame ``t-1``'s objects as exemplars)
lives in :mod:`mm_core.pipelines`; a tracking head only reads what the pipeline
gives it. Every linker has the same two steps:

- ``frame_summary(labels, maps, frame)``: what it keeps of one frame while the
  pipeline moves on (here: each object's mean engine descriptor);
- ``link_sequence(labels, summaries, maps, frames)``: tracks from all frames.

:class:`AnalyticLinker` links by overlap, distance and descriptors
(:func:`mm_core.heads.linking.link_labels`); the learned
:class:`~mm_core.heads.learned.tracking.LinkingHead` has the same interface
(``needs_maps = True``: it reads every frame's maps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mm_core.engines.base import MatchMaps
from mm_core.heads.linking import LinkParams, link_labels
from mm_core.heads.objects import object_features

__all__ = ["AnalyticLinker"]


class AnalyticLinker:
    """Bidirectional assignment with divisions and gap closing, on geometry and descriptors.

    Parameters
    ----------
    params : LinkParams, optional
        Costs and gates of :func:`mm_core.heads.linking.link_labels`.
    """

    task = "track"
    needs_maps = False

    def __init__(self, params: LinkParams | None = None):
        self.params = params or LinkParams()

    def frame_summary(self, labels: np.ndarray, maps: MatchMaps, frame: np.ndarray) -> np.ndarray | None:
        """Mean engine descriptor of each object of ``labels`` (rows in label order), or ``None``."""
        return object_features(labels, maps.features)

    def link_sequence(self, labels: Sequence[np.ndarray], summaries: Sequence, maps=None,
                      frames=None) -> tuple[np.ndarray, pd.DataFrame]:
        """Tracks from every frame's labels and summaries.

        Parameters
        ----------
        labels : sequence of (H, W) int arrays
            Instance labels of every frame.
        summaries : sequence
            :meth:`frame_summary` of every frame.
        maps, frames : ignored
            Accepted so that every linker is called the same way.

        Returns
        -------
        masks : ndarray (T, H, W) int32
            Labels are track ids.
        tracks : pandas.DataFrame
            ``label, begin, end, parent`` (CTC).
        """
        return link_labels(labels, list(summaries), self.params)

    def describe(self) -> str:
        """One line naming the head (for the CLI and the app)."""
        return "analytic linking (overlap + distance + descriptors)"
