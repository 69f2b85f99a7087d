"""Flows (Cellpose's idea, our implementation): targets, augmentation and decoding back to instances."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse

from mm_core.evaluation.metrics import average_precision
from mm_core.heads.flows import (
    distance_to_labels,
    flows_to_labels,
    labels_to_flows,
    normalized_distance,
    transform_flows,
)


def _scene() -> np.ndarray:
    """Touching disks, an elongated rod, a large irregular object and a small one."""
    lab = np.zeros((160, 160), np.int32)
    yy, xx = np.mgrid[:160, :160]
    lab[(yy - 40) ** 2 + (xx - 40) ** 2 <= 15 ** 2] = 1
    lab[((yy - 40) ** 2 + (xx - 69) ** 2 <= 15 ** 2) & (lab == 0)] = 2  # touches object 1
    rr, cc = ellipse(100, 50, 6, 35, rotation=0.4, shape=lab.shape)
    lab[rr, cc] = 3
    blob = ((yy - 115) ** 2 / 30 ** 2 + (xx - 120) ** 2 / 20 ** 2 <= 1) | ((yy - 90) ** 2 + (xx - 128) ** 2 <= 12 ** 2)
    lab[blob & (lab == 0)] = 4
    lab[(yy - 20) ** 2 + (xx - 130) ** 2 <= 4 ** 2] = 5
    return lab


def test_flows_are_unit_vectors_on_objects_and_point_inwards():
    lab = _scene()
    f = labels_to_flows(lab)
    mag = np.sqrt((f ** 2).sum(0))
    assert np.all(mag[lab == 0] == 0)
    assert np.mean(np.abs(mag[lab > 0] - 1) < 1e-4) > 0.99
    # on a disk the flow points at its centre
    yy, xx = np.nonzero(lab == 1)
    to_c = np.stack([40 - yy, 40 - xx]).astype(float)
    far = np.hypot(*to_c) > 3
    cos = (f[:, yy, xx] * to_c).sum(0)[far] / np.hypot(*to_c)[far]
    assert np.median(cos) > 0.95


def test_following_the_true_flows_gives_back_the_objects():
    lab = _scene()
    out = flows_to_labels(labels_to_flows(lab), (lab > 0).astype(np.float32))
    assert out.max() == lab.max()
    assert average_precision(lab, out, [0.9])["ap"][0] == 1.0


def test_large_objects_use_a_shrunk_copy_and_still_give_one_object():
    lab = np.zeros((160, 160), np.int32)
    yy, xx = np.mgrid[:160, :160]
    lab[(yy - 80) ** 2 / 60 ** 2 + (xx - 80) ** 2 / 40 ** 2 <= 1] = 1
    f = labels_to_flows(lab, max_side=48)
    out = flows_to_labels(f, (lab > 0).astype(np.float32))
    assert out.max() == 1 and (out == 1).sum() > 0.95 * (lab == 1).sum()


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_flows_of_a_rotated_crop_equal_the_transformed_flows(k, flip):
    lab = _scene()[:100, :120]
    moved = np.rot90(lab, k)
    moved = np.ascontiguousarray(np.flip(moved, -1) if flip else moved)
    assert np.allclose(labels_to_flows(moved), transform_flows(labels_to_flows(lab), k, flip), atol=1e-5)


def test_distance_decoder_splits_touching_objects():
    lab = _scene()
    d = normalized_distance(lab)
    assert d.max() == pytest.approx(1.0) and np.all(d[lab == 0] == 0)
    out = distance_to_labels(d, (lab > 0).astype(np.float32))
    assert out.max() == lab.max()
    assert average_precision(lab, out, [0.8])["ap"][0] == 1.0


def test_nothing_in_nothing_out():
    z = np.zeros((32, 32), np.int32)
    assert labels_to_flows(z).shape == (2, 32, 32) and not labels_to_flows(z).any()
    assert flows_to_labels(np.zeros((2, 32, 32)), np.zeros((32, 32))).max() == 0
    assert distance_to_labels(np.zeros((32, 32)), np.zeros((32, 32))).max() == 0
