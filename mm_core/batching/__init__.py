"""Many images and whole slides: the batch runner (:mod:`.run`, in this process or on Dask), one
image's task (:mod:`.tasks`) and large images processed tile by tile (:mod:`.tiled`).

Nothing is imported here, so ``mm_core.batching.tiled`` can be used without Dask.

The package is ``batching``, not ``batch``: :func:`mm_core.batch` is the public function that
runs a batch, and a subpackage of the same name would replace it on import.
"""
