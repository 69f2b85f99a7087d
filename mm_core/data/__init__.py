"""Dataset readers for training heads (``python -m mm_core.train``)."""

from mm_core.data.readers import (
                                  Sample,
                                  find_counting,
                                  find_segmentation,
                                  find_tracking,
                                  load_ctc,
                                  load_image,
                                  load_labels,
                                  load_points,
)

__all__ = ["Sample", "find_counting", "find_segmentation", "find_tracking", "load_ctc", "load_image",
           "load_labels", "load_points"]
