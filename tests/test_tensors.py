"""metaportrait.tensors: the one uint8 <-> [-1, 1] conversion of the package."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from metaportrait import pipeline
from metaportrait.tensors import to_tensor, to_uint8


def test_round_trip_is_exact_for_every_grey_level():
    a = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    t = to_tensor(a)
    assert t.shape == (1, 3, 16, 16) and t.dtype == torch.float32
    assert t.min().item() == -1.0 and t.max().item() == 1.0
    np.testing.assert_array_equal(to_uint8(t)[0], a)


def test_list_input_and_clamping():
    frames = [np.full((4, 5, 3), v, np.uint8) for v in (0, 128, 255)]
    t = to_tensor(frames)
    assert t.shape == (3, 3, 4, 5)
    out = to_uint8(torch.tensor([-3.0, 3.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    np.testing.assert_array_equal(out[0, 0], [[0, 0, 0], [255, 255, 255]])


def test_read_only_memory_map_is_copied_not_wrapped(tmp_path):
    path = tmp_path / "frames.npy"
    np.save(path, np.full((2, 4, 4, 3), 255, np.uint8))
    frames = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a non-writeable array
        t = to_tensor(frames)
    t.add_(1.0)  # must not reach the file
    assert np.load(path).max() == 255


def test_float_input_is_not_modified_in_place():
    a = np.full((2, 2, 3), 255.0, np.float32)
    to_tensor(a)
    assert a.max() == 255.0


def test_pipeline_keeps_exporting_the_same_functions():
    assert pipeline.to_tensor is to_tensor and pipeline.to_uint8 is to_uint8
    assert {"to_tensor", "to_uint8"} <= set(pipeline.__all__)
