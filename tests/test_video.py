"""metaportrait.video: probing and reading the example clips, bad inputs, and the H.264 writer."""

from __future__ import annotations

import gc
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

from metaportrait.errors import InputTooLargeError, InvalidVideoError
from metaportrait.io import InputLimits
from metaportrait.video import (
    AI_GENERATED_COMMENT,
    VideoWriter,
    add_visible_label,
    iter_frames,
    probe_video,
    read_frames,
    read_metadata,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write_clip(path: Path, frames, fps=24, **kw) -> Path:
    with VideoWriter(path, fps, **kw) as w:
        for f in frames:
            w.write(f)
    return path


@pytest.fixture(scope="module")
def faststart_clip(tmp_path_factory, driving_video) -> Path:
    """The 120-frame driving clip re-encoded by VideoWriter (moov atom first)."""
    path = tmp_path_factory.mktemp("clips") / "faststart.mp4"
    return _write_clip(path, iter_frames(driving_video), fps=24, crf=28, preset="ultrafast")


# -- probing and reading -------------------------------------------------------------------


def test_probe_driving_video(driving_video):
    info = probe_video(driving_video)
    assert (info.width, info.height) == (360, 288)
    assert info.fps == pytest.approx(24.0)
    assert info.num_frames == 120 and info.frames_counted
    assert info.duration == pytest.approx(5.0, abs=0.05)
    assert info.has_audio is False
    assert info.codec == "h264"
    assert info.rotation == 0


def test_probe_driving_video_audio(driving_video_audio):
    info = probe_video(driving_video_audio)
    assert (info.width, info.height) == (470, 360)
    assert info.fps == pytest.approx(25.0)
    assert info.num_frames == 100
    assert info.duration == pytest.approx(4.0, abs=0.05)
    assert info.has_audio is True


def test_iter_frames_all_and_max(driving_video):
    frames = read_frames(driving_video)
    assert len(frames) == 120
    assert all(f.shape == (288, 360, 3) and f.dtype == np.uint8 for f in frames)
    assert frames[0].std() > 10  # real picture content
    first = read_frames(driving_video, max_frames=5)
    assert len(first) == 5
    np.testing.assert_array_equal(first[4], frames[4])
    assert read_frames(driving_video, max_frames=0) == []
    with pytest.raises(ValueError, match="max_frames"):
        read_frames(driving_video, max_frames=-1)


def test_rotation_is_applied(tmp_path):
    """A phone-style clip stored landscape with a 90° display matrix is read upright."""
    path = tmp_path / "rotated.mp4"
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, :32] = 255  # white stripe on the left of the stored picture
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 128, 64, "yuv420p"
        s.set_display_rotation(90)  # counter-clockwise
        for i in range(5):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (64, 128, 90)
    frames = read_frames(path)
    assert len(frames) == 5 and frames[0].shape == (128, 64, 3)
    rows = frames[0][..., 0].mean(axis=1)
    assert rows[-1] > 200 and rows[0] < 50  # the left stripe is now at the bottom


# -- bad inputs ----------------------------------------------------------------------------


def test_text_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("definitely not a video\n" * 50)
    with pytest.raises(InvalidVideoError, match=r"notes\.mp4.*not a readable video"):
        probe_video(path)
    with pytest.raises(InvalidVideoError):
        read_frames(path)


def test_missing_and_empty(tmp_path):
    with pytest.raises(InvalidVideoError, match="does not exist"):
        probe_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InvalidVideoError, match="empty"):
        probe_video(tmp_path / "empty.mp4")


def test_playlist_is_not_followed(tmp_path, driving_video):
    """An HLS playlist must not make FFmpeg open other files."""
    path = tmp_path / "list.m3u8"
    path.write_text(f"#EXTM3U\n#EXTINF:5.0,\n{driving_video}\n#EXT-X-ENDLIST\n")
    with pytest.raises(InvalidVideoError):
        probe_video(path)


def test_truncated_mp4_header_missing(tmp_path, driving_video):
    """The example keeps its moov atom at the end: 30 % of the bytes have no header."""
    data = driving_video.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(InvalidVideoError, match=r"cut\.mp4"):
        probe_video(path)
    with pytest.raises(InvalidVideoError):
        read_frames(path)


def test_truncated_mp4_midway_is_an_error(tmp_path, faststart_clip):
    """moov first, data cut: some frames decode, then a clear error with the count."""
    data = faststart_clip.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    assert probe_video(path).num_frames == 120  # the header still lists every frame
    seen = 0
    with pytest.raises(InvalidVideoError, match=r"half\.mp4.*truncated or corrupt.*after \d+ of (the )?120") as info:
        for _ in iter_frames(path):
            seen += 1
    assert 0 < seen < 120
    assert f"after {seen} of" in str(info.value)


def test_audio_only_mp4_has_no_video(tmp_path, driving_video_audio):
    path = tmp_path / "audio_only.mp4"
    with av.open(str(driving_video_audio)) as src, av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(audio=0):
            if packet.dts is None:
                continue
            packet.stream = s
            out.mux(packet)
    with pytest.raises(InvalidVideoError, match=r"no video stream \(found: audio\)"):
        probe_video(path)


def test_header_without_frames(tmp_path):
    """A valid MP4 header whose video stream holds no frames."""
    path = tmp_path / "noframes.mp4"
    out = av.open(str(path), "w", format="mp4")
    s = out.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    out.start_encoding()
    out.close()
    assert path.stat().st_size > 0
    with pytest.raises(InvalidVideoError, match=r"noframes\.mp4"):
        probe_video(path)


def test_frames_that_do_not_decode(tmp_path, faststart_clip):
    """Header intact, every byte of frame data zeroed: zero decodable frames."""
    data = bytearray(faststart_clip.read_bytes())
    start = data.find(b"mdat") + 4
    data[start:] = bytes(len(data) - start)
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidVideoError, match=r"zeroed\.mp4.*no video frame could be decoded"):
        probe_video(path)


@pytest.mark.parametrize(
    "limits, pattern",
    [
        (InputLimits(max_video_seconds=2.0), r"5\.00 s long; the limit is 2 s"),
        (InputLimits(max_video_frames=50), r"120 frames; the limit is 50 frames"),
        (InputLimits(max_video_side=320), r"360×288; the largest side allowed is 320"),
        (InputLimits(max_video_bytes=10_000), r"MiB; the limit for videos is 0\.0 MiB"),
    ],
)
def test_limits_exceeded(driving_video, limits, pattern):
    with pytest.raises(InputTooLargeError, match=pattern):
        probe_video(driving_video, limits)
    with pytest.raises(InputTooLargeError):
        next(iter_frames(driving_video, limits=limits))


# -- writer --------------------------------------------------------------------------------


def test_writer_round_trip_with_audio(tmp_path, driving_video_audio):
    src = read_frames(driving_video_audio, max_frames=30)
    out = tmp_path / "result.mp4"
    _write_clip(out, src, fps=25, audio_from=driving_video_audio, metadata={"title": "demo run"})
    assert _leftovers(tmp_path) == ["result.mp4"]
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == "h264"
        assert v.codec_context.pix_fmt == "yuv420p"
        assert v.average_rate == 25
        assert len(c.streams.audio) == 1
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac"
        assert float(a.duration * a.time_base) == pytest.approx(30 / 25, abs=0.03)
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 30
    assert np.abs(decoded[10].astype(int) - src[10]).mean() < 4.0
    meta = read_metadata(out)
    assert meta["comment"].startswith("AI-generated")
    assert meta["title"] == "demo run"
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart
    info = probe_video(out)
    assert info.has_audio and info.num_frames == 30 and info.fps == pytest.approx(25.0)


def test_writer_audio_source_without_audio(tmp_path, driving_video):
    out = _write_clip(tmp_path / "silent.mp4", read_frames(driving_video, max_frames=6), audio_from=driving_video)
    assert probe_video(out).has_audio is False


def test_writer_comment_cannot_be_removed(tmp_path, astronaut):
    frame = np.ascontiguousarray(astronaut[::4, ::4])
    out = _write_clip(
        tmp_path / "c.mov", [frame] * 3, metadata={"comment": "my note", "project": "test"}
    )
    meta = read_metadata(out)
    assert meta["comment"] == f"{AI_GENERATED_COMMENT}. my note"
    assert meta["project"] == "test"  # non-standard keys are kept, not silently dropped


def test_writer_odd_size_padded(tmp_path, astronaut):
    frame = np.ascontiguousarray(astronaut[:101, :75])
    out = _write_clip(tmp_path / "odd.mp4", [frame] * 4, fps=10)
    frames = read_frames(out)
    assert len(frames) == 4 and frames[0].shape == (102, 76, 3)
    assert np.abs(frames[0][:101, :75].astype(int) - frame).mean() < 6.0


def test_writer_rejects_bad_frames_and_arguments(tmp_path, astronaut):
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "a.mp4", 0)
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(tmp_path / "a.mp4", 25, crf=60)
    with pytest.raises(ValueError, match="suffix"):
        VideoWriter(tmp_path / "a.avi", 25)
    with pytest.raises(InvalidVideoError, match="does not exist"):
        VideoWriter(tmp_path / "a.mp4", 25, audio_from=tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(tmp_path / "a.mp4", 25) as w:
            w.write(astronaut.astype(np.float32))
    with pytest.raises(ValueError, match="is 256×256 but the video is 512×512"):
        with VideoWriter(tmp_path / "a.mp4", 25) as w:
            w.write(astronaut)
            w.write(np.ascontiguousarray(astronaut[::2, ::2]))
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "a.mp4", 25):
            pass
    assert _leftovers(tmp_path) == []


def test_writer_exception_leaves_no_file(tmp_path, astronaut):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, 25, preset="ultrafast") as w:
            for i in range(60):  # past x264's lookahead, so packets reach the file
                w.write(np.roll(astronaut[::2, ::2], i, axis=0))
            assert any(p.name.endswith(".part") for p in tmp_path.iterdir())  # temp file in use
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_writer_replaces_existing_only_on_success(tmp_path, astronaut, driving_video):
    target = tmp_path / "out.mp4"
    shutil.copy(driving_video, target)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(target, 25) as w:
            w.write(astronaut)
            raise KeyboardInterrupt
    assert target.read_bytes() == before and _leftovers(tmp_path) == ["out.mp4"]
    _write_clip(target, [astronaut] * 2, fps=25)
    assert len(read_frames(target)) == 2


def test_writer_fractional_fps(tmp_path, astronaut):
    out = _write_clip(tmp_path / "ntsc.mp4", [astronaut[::4, ::4].copy()] * 6, fps=30000 / 1001)
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)


def _rss_after_writing(path: Path, n: int, frame: np.ndarray) -> int:
    gc.collect()
    proc = psutil.Process()
    peak = proc.memory_info().rss
    with VideoWriter(path, 25, preset="ultrafast", crf=30) as w:
        for i in range(n):
            w.write(np.roll(frame, i, axis=1))
            if i % 50 == 0:
                peak = max(peak, proc.memory_info().rss)
    return max(peak, proc.memory_info().rss)


def test_writer_memory_is_independent_of_length(tmp_path, astronaut):
    frame = np.ascontiguousarray(astronaut[::2, ::2])  # 256×256
    _rss_after_writing(tmp_path / "warm.mp4", 20, frame)  # load codecs once
    short = _rss_after_writing(tmp_path / "short.mp4", 100, frame)
    long = _rss_after_writing(tmp_path / "long.mp4", 600, frame)
    assert long - short < 50 * 2**20, f"RSS grew by {(long - short) / 2**20:.1f} MB"
    assert len(read_frames(tmp_path / "long.mp4")) == 600


# -- label ---------------------------------------------------------------------------------


def test_visible_label(astronaut):
    labelled = add_visible_label(astronaut)
    assert labelled is not astronaut and labelled.shape == astronaut.shape
    assert labelled.dtype == np.uint8
    changed = np.any(labelled != astronaut, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.min() > 512 * 0.8 and xs.min() > 512 * 0.5  # bottom-right corner only
    assert changed.sum() < 0.05 * changed.size
    box = labelled[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert (box.max(axis=2) > 230).sum() > 50  # white text strokes
    # semi-transparent: outside the text strokes the box is the picture darkened, not painted over
    original = astronaut[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(int)
    shaded = np.all(np.abs(box.astype(int) - np.rint(original * 0.45)) <= 1, axis=2)
    assert shaded.mean() > 0.5 and original[shaded].std() > 3
    # scales with the frame and fits small frames
    small = add_visible_label(np.ascontiguousarray(astronaut[::8, ::8]))
    assert np.any(small != astronaut[::8, ::8])
    wide_text = add_visible_label(astronaut[:80].copy(), "AI-generated with metaportrait")
    assert np.any(wide_text[:, :10] == astronaut[:80, :10])
    with pytest.raises(ValueError, match="ASCII"):
        add_visible_label(astronaut, "KI-generiert ä")
    with pytest.raises(ValueError, match="uint8"):
        add_visible_label(astronaut.astype(np.float32))


def test_an_flv_upload_is_transcoded_for_the_browser_preview(tmp_path):
    """FLV (and other containers a browser cannot play) becomes H.264 MP4 with the same frames."""
    from conftest import write_flv
    from metaportrait.video import browser_playable, iter_frames, probe_video, transcode_for_browser

    src = Path(__file__).resolve().parents[1] / "examples" / "driving_webcam.mp4"
    flv = write_flv(list(iter_frames(src, max_frames=12)), tmp_path / "drive.flv")
    assert browser_playable(src) and not browser_playable(flv)
    out = transcode_for_browser(flv, tmp_path / "drive.mp4")
    assert browser_playable(out)
    info = probe_video(out)
    assert info.num_frames == 12 and abs(info.fps - 25) < 1e-6
    a = np.stack(list(iter_frames(flv))).astype(int)
    b = np.stack(list(iter_frames(out))).astype(int)
    assert np.abs(a - b).mean() < 4
