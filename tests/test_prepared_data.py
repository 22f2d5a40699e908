"""The prepared-data reader (metaportrait.training.prepared): manifest checks, splits, validity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metaportrait.training.prepared import (
    FORMAT,
    HELDOUT_FRAMES,
    HELDOUT_IDENTITY,
    TRAIN,
    PreparedData,
    frames_file,
)


def _write(root: Path, clips: list[tuple[str, str, int, int | None, bool]], fmt: str = FORMAT) -> Path:
    records = []
    for cid, split, n, held, with_valid in clips:
        d = root / "clips" / cid
        d.mkdir(parents=True)
        np.save(d / frames_file(256), np.zeros((n, 4, 4, 3), np.uint8))
        np.save(d / "landmarks_256.npy", np.zeros((n, 478, 2), np.float32))
        if with_valid:
            np.save(d / "valid.npy", np.arange(n) % 3 != 1)
        rec = {"id": cid, "identity": cid.split("/")[0], "num_frames": n, "split": split}
        if held is not None:
            rec["heldout_frames_from"] = held
        records.append(rec)
    (root / "manifest.json").write_text(json.dumps({"format": fmt, "clips": records, "skipped": []}))
    return root


def test_missing_manifest_and_wrong_format_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        PreparedData(tmp_path)
    _write(tmp_path, [("a/1", TRAIN, 4, 3, True)], fmt="something-else")
    with pytest.raises(ValueError, match="metaportrait-prepared-v1"):
        PreparedData(tmp_path)


def test_splits_validity_and_memory_maps(tmp_path: Path) -> None:
    data = PreparedData(_write(tmp_path, [("a/1", TRAIN, 9, 6, True), ("a/2", TRAIN, 5, None, False),
                                          ("b/1", HELDOUT_IDENTITY, 4, 0, True)]))
    assert [c.id for c in data.clips_in(TRAIN)] == ["a/1", "a/2"]
    assert [c.id for c in data.clips_in(HELDOUT_FRAMES)] == ["a/1", "a/2"]
    assert [c.id for c in data.clips_in(HELDOUT_IDENTITY)] == ["b/1"]
    a1, a2, b1 = data.clips
    assert a1.split_range(TRAIN) == (0, 6) and a1.split_range(HELDOUT_FRAMES) == (6, 9)
    assert a1.split_range(HELDOUT_IDENTITY) is None and b1.split_range(TRAIN) is None
    assert a2.heldout_start() == 5 and a2.split_range(HELDOUT_FRAMES) == (5, 5)  # nothing held out
    assert b1.split_range(HELDOUT_IDENTITY) == (0, 4)
    assert data.usable_frames(a1, TRAIN).tolist() == [0, 2, 3, 5]  # valid.npy drops every third frame
    assert data.usable_frames(a2, TRAIN).tolist() == [0, 1, 2, 3, 4]  # no valid.npy: every frame
    assert data.usable_frames(b1, TRAIN).size == 0
    frames = data.frames(a1)
    assert isinstance(frames, np.memmap) and not frames.flags.writeable and frames.shape == (9, 4, 4, 3)
    assert data.landmarks(a1).shape == (9, 478, 2)
    with pytest.raises(ValueError, match="split"):
        a1.split_range("test")
