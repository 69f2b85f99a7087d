"""Pictures of results: overlays, heat-maps and boxes (:mod:`.images`), track animations (:mod:`.tracks`),
size histograms and tracking curves (:mod:`.plots`)."""

from mm_core.viz.images import *  # noqa: F401,F403 (the public names, listed in images.__all__)
from mm_core.viz.images import __all__ as _images_all
from mm_core.viz.plots import png_bytes, size_histogram, tracking_plot, write_png, write_result_plots
from mm_core.viz.tracks import render_track_frame, render_tracks, track_centroids

__all__ = [*_images_all, "png_bytes", "render_track_frame", "render_tracks", "size_histogram", "track_centroids",
           "tracking_plot", "write_png", "write_result_plots"]
