"""Pictures of results: overlays, heat-maps and boxes (:mod:`.images`), track animations (:mod:`.tracks`)."""

from mm_core.viz.images import *  # noqa: F401,F403 (the public names, listed in images.__all__)
from mm_core.viz.images import __all__ as _images_all
from mm_core.viz.tracks import render_track_frame, render_tracks, track_centroids

__all__ = [*_images_all, "render_track_frame", "render_tracks", "track_centroids"]
