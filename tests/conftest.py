"""Shared fixtures: real faces and real video clips (see examples/README.md for provenance)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """Public-domain NASA portrait, 512×512×3 uint8 RGB."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def mona_lisa() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(EXAMPLES / "mona_lisa.jpg").convert("RGB"))


@pytest.fixture(scope="session")
def driving_video() -> Path:
    """5 s talking-face clip, 120 frames at 24 fps, 360×288, no audio."""
    return EXAMPLES / "driving_franck.mp4"


@pytest.fixture(scope="session")
def driving_video_audio() -> Path:
    """4 s talking-face clip with AAC audio, 100 frames at 25 fps."""
    return EXAMPLES / "driving_speech.mp4"


@pytest.fixture(scope="session")
def driving_frames(driving_video) -> list[np.ndarray]:
    """The first 24 RGB frames of the driving clip."""
    import av

    frames = []
    with av.open(str(driving_video)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            if len(frames) == 24:
                break
    return frames


@pytest.fixture(scope="session")
def no_face_image() -> np.ndarray:
    """A real photograph without a face (scikit-image's coffee cup)."""
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """A real prepared training set: 16 frames of two example clips (two identities), 256² crops."""
    import shutil

    from metaportrait.training.prepare import prepare_data

    raw = tmp_path_factory.mktemp("raw")
    for name, ident in [("driving_franck.mp4", "franck"), ("driving_webcam.mp4", "webcam")]:
        (raw / ident / "clip").mkdir(parents=True)
        shutil.copy(EXAMPLES / name, raw / ident / "clip" / name)
    out = tmp_path_factory.mktemp("prepared")
    prepare_data(raw, out, sizes=(256,), workers=1, max_frames_per_clip=16, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny256_config(tmp_path_factory) -> Path:
    """The "tiny" generator preset at 256² (the prepared data's size), as a GeneratorConfig JSON file."""
    import json

    from metaportrait.models.generator import generator_config

    cfg = generator_config("tiny")
    cfg = cfg.replace(warping=cfg.warping.replace(image_size=256), refinement=cfg.refinement.replace(image_size=256))
    path = tmp_path_factory.mktemp("cfg") / "tiny256.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def write_flv(frames: list[np.ndarray], path: Path, fps: int = 25) -> Path:
    """Real frames written as an FLV (Sorenson) video: a container and codec browsers cannot play."""
    import av

    with av.open(str(path), "w", format="flv") as c:
        st = c.add_stream("flv", rate=fps)
        st.width, st.height, st.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path
