"""The web demo: a real server, a real browser (Debian chromium through Playwright) and gradio_client.

The app runs in a subprocess on a free port with the weights named by METAPORTRAIT_WEIGHTS (a tiny
generator made here, to keep the suite fast; the embedded weights are exercised in test_weights.py),
fully offline.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_weights(tmp_path_factory) -> Path:
    import torch

    from metaportrait.models.generator import MetaPortraitGenerator, generator_config
    from metaportrait.weights import write_model_index

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("app-weights")
    cfg = generator_config("tiny")
    cfg = cfg.replace(warping=cfg.warping.replace(image_size=128), refinement=cfg.refinement.replace(image_size=128))
    MetaPortraitGenerator(cfg).save_pretrained(folder / "base")
    from metaportrait.models.temporal_sr import TemporalSRConfig, TemporalSuperResolution

    TemporalSuperResolution(TemporalSRConfig.from_preset("tiny", in_size=128, out_size=256)).save_pretrained(folder / "sr")
    write_model_index(folder, generator="base", sr="sr")
    return folder


@pytest.fixture(scope="module")
def server(app_weights, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "METAPORTRAIT_WEIGHTS": str(app_weights), "GRADIO_SERVER_PORT": str(port),
           "METAPORTRAIT_MAX_SECONDS": "8"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    import urllib.request

    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError(f"app did not start: {log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_app_builds_offline_at_import():
    """Importing app.py builds `demo` without launching or touching the network."""
    code = ("import app, gradio as gr; assert isinstance(app.demo, gr.Blocks); "
            "print(sorted(d['api_name'] for d in app.demo.config['dependencies'] if d.get('api_name')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "reenact" in out.stdout


@pytest.fixture(scope="module")
def reenacted(server) -> str:
    """The astronaut driven by the webcam clip through the /reenact endpoint (a 128² crop video)."""
    from gradio_client import Client, handle_file

    result = Client(server, verbose=False).predict(
        handle_file(str(REPO / "examples" / "astronaut.jpg")),
        handle_file(str(REPO / "examples" / "driving_webcam.mp4")),
        "relative", False, api_name="/reenact",
    )
    return str(result["video"] if isinstance(result, dict) else result)


def test_gradio_client_endpoint(reenacted):
    import av

    with av.open(reenacted) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert n == 100


def test_gradio_client_reenact_then_upscale(server, reenacted):
    """The 512² tab's endpoint on a real reenactment: the upscaled video has the SR model's size and the
    same frames; the comparison video puts bicubic and SR side by side."""
    import av
    from gradio_client import Client, handle_file

    up, cmp = Client(server, verbose=False).predict(handle_file(reenacted), api_name="/upscale")

    def info(path):
        p = path["video"] if isinstance(path, dict) else path
        with av.open(str(p)) as c:
            frames = [f for f in c.decode(video=0)]
        return len(frames), frames[0].width, frames[0].height

    assert info(reenacted)[1:] == (128, 128)
    assert info(up) == (100, 256, 256)
    n, w, h = info(cmp)
    assert n == 100 and w == 2 * h


def test_gradio_client_friendly_error(server, tmp_path):
    from gradio_client import Client, handle_file

    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("hello")
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="not_a_video.mp4' is not a readable video") as info:
        client.predict(handle_file(str(REPO / "examples" / "astronaut.jpg")), handle_file(str(bad)),
                       "relative", False, api_name="/reenact")
    assert "/tmp" not in str(info.value), "server paths must not leak into user-facing errors"


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_upload_click_and_play(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server, wait_until="domcontentloaded", timeout=120_000)  # gradio keeps a stream open: no "networkidle"
        page.locator("#source-image input[type=file]").wait_for(state="attached", timeout=120_000)
        page.locator("#source-image input[type=file]").set_input_files(str(REPO / "examples" / "astronaut.jpg"))
        page.locator("#driving-video input[type=file]").set_input_files(str(REPO / "examples" / "driving_webcam.mp4"))
        page.locator("#driving-video video").wait_for(timeout=60_000)
        page.get_by_role("button", name="Animate").click()
        video = page.locator("#result-video video")
        video.wait_for(timeout=240_000)
        page.wait_for_function(
            """() => { const v = document.querySelector('#result-video video');
                       return v && v.readyState >= 2 && v.duration > 1 && !v.error; }""",
            timeout=240_000,
        )
        duration = video.evaluate("v => v.duration")
        browser.close()
    assert duration == pytest.approx(4.0, abs=0.3)


def test_gradio_client_personalize_then_reenact_with_adapter(server, tmp_path):
    """The personalization endpoint streams to completion and returns downloadable safetensors."""
    from gradio_client import Client, handle_file

    import zipfile

    client = Client(server, verbose=False)
    photos = [handle_file(str(REPO / "examples" / n)) for n in ("astronaut.jpg", "mona_lisa.jpg")]
    plot, before, after, summary, packed = client.predict(None, photos, 10, "lora", api_name="/personalize")
    names = sorted(zipfile.ZipFile(packed).namelist())  # one download: safetensors + JSON
    assert "adapter.safetensors" in names and "adapter_config.json" in names
    # what was done, in words (these test weights have no mouth network: no mouth line)
    assert "steps in" in summary and "hold any back" in summary and "mouth" not in summary.lower(), summary
    assert all(n.endswith((".safetensors", ".json", ".md")) for n in names)
    assert before and after
    # the same session uses the adapter straight away in the reenactment endpoint
    short = tmp_path / "short.mp4"
    from metaportrait.video import VideoWriter, iter_frames

    with VideoWriter(short, fps=25) as w:
        for f in iter_frames(REPO / "examples" / "driving_webcam.mp4", max_frames=10):
            w.write(f)
    result = client.predict(handle_file(str(REPO / "examples" / "astronaut.jpg")), handle_file(str(short)),
                            "relative", False, True, api_name="/reenact")
    path = result["video"] if isinstance(result, dict) else result
    assert Path(path).stat().st_size > 0
    # another session (no state) passes the downloaded .zip through the API instead
    other = Client(server, verbose=False)
    result = other.predict(handle_file(str(REPO / "examples" / "astronaut.jpg")), handle_file(str(short)),
                           "relative", False, False, handle_file(packed), api_name="/reenact")
    path = result["video"] if isinstance(result, dict) else result
    assert Path(path).stat().st_size > 0
    # a "full" personalization (all weights) is usable too
    plot, before, after, _summary, packed_full = client.predict(None, photos, 10, "full", api_name="/personalize")
    assert "model_index.json" in zipfile.ZipFile(packed_full).namelist()
    result = client.predict(handle_file(str(REPO / "examples" / "astronaut.jpg")), handle_file(str(short)),
                            "relative", False, True, api_name="/reenact")
    assert Path(result["video"] if isinstance(result, dict) else result).stat().st_size > 0
    with pytest.raises(Exception, match="(?i)video|photos"):
        client.predict(None, [], 10, "lora", api_name="/personalize")
    # a zip that is not a personalized model is refused with one line
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.py", "print('x')")
    with pytest.raises(Exception, match="refusing the member"):
        other.predict(handle_file(str(REPO / "examples" / "astronaut.jpg")), handle_file(str(short)),
                      "relative", False, False, handle_file(str(bad)), api_name="/reenact")


def test_api_names_and_optional_inputs(server):
    from gradio_client import Client

    info = Client(server, verbose=False).view_api(return_format="dict", print_info=False)
    endpoints = info["named_endpoints"]
    params = {p["parameter_name"]: p for p in endpoints["/personalize"]["parameters"]}
    assert params["photos"]["parameter_has_default"], params["photos"]
    returns = [r["label"] for r in endpoints["/personalize"]["returns"]]
    assert "Training loss" in returns and not any(str(r).startswith("value_") for r in returns)
    reenact = {p["parameter_name"]: p for p in endpoints["/reenact"]["parameters"]}
    assert reenact["personal_zip"]["parameter_has_default"]


def test_personalization_tab_fewshot_family(tmp_path):
    """The few-shot family through the app's handlers (no server: the same functions the tab calls)."""
    import importlib

    import torch

    from metaportrait.training.fewshot import build_models
    from metaportrait.weights import write_model_index

    torch.manual_seed(0)
    e, g, d = build_models("tiny", num_videos=2)
    for name, m in [("embedder", e), ("generator", g), ("discriminator", d)]:
        m.save_pretrained(tmp_path / "w" / "fewshot" / name)
    write_model_index(tmp_path / "w", fewshot="fewshot")
    os.environ["METAPORTRAIT_WEIGHTS"] = str(tmp_path / "w")
    try:
        app = importlib.reload(importlib.import_module("app"))
        import zipfile

        # 30 s: under load the first fine-tuning steps of 2 OpenMP threads can take several seconds each
        updates = list(app.personalize(None, [str(REPO / "examples" / "astronaut.jpg"),
                                              str(REPO / "examples" / "mona_lisa.jpg")], 30, "lora", "fewshot"))
        plot, *_, summary, packed, person_dir = updates[-1]
        assert len(plot) > 1  # the loss curve of the fine-tuning steps, streamed while it ran
        assert summary.startswith("Few-shot model") and "fine-tuning steps" in summary, summary
        assert any(n.endswith("model.safetensors") for n in zipfile.ZipFile(packed).namelist())
        out = app.reenact(str(REPO / "examples" / "astronaut.jpg"), str(REPO / "examples" / "driving_webcam.mp4"),
                          "relative", False, True, session_folder=person_dir, progress=lambda *a, **k: None)
        # Cancel: closing the stream (what the Cancel button does) stops the training and writes nothing
        import time as _time

        before = set(app.OUTPUT_DIR.glob("*.zip"))
        job = app.personalize(None, [str(REPO / "examples" / "astronaut.jpg"), str(REPO / "examples" / "mona_lisa.jpg")],
                              120, "lora", "fewshot")
        next(job)
        next(job)
        job.close()
        _time.sleep(3)
        assert set(app.OUTPUT_DIR.glob("*.zip")) == before
        import av

        with av.open(out) as c:
            assert sum(1 for _ in c.decode(video=0)) == 100
    finally:
        os.environ.pop("METAPORTRAIT_WEIGHTS", None)
        importlib.reload(importlib.import_module("app"))  # later tests get the app on the embedded weights


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_flv_driver_gets_a_playable_preview(server, tmp_path):
    """An .flv driving video works and its upload preview plays (it is re-encoded to H.264 MP4)."""
    from playwright.sync_api import sync_playwright

    from conftest import write_flv

    from metaportrait.video import iter_frames

    flv = write_flv(list(iter_frames(REPO / "examples" / "driving_webcam.mp4", max_frames=25)), tmp_path / "drive.flv")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server, wait_until="domcontentloaded", timeout=120_000)
        page.locator("#driving-video input[type=file]").wait_for(state="attached", timeout=120_000)
        page.locator("#driving-video input[type=file]").set_input_files(str(flv))
        page.wait_for_function(
            """() => { const v = document.querySelector('#driving-video video');
                       return v && v.src && v.src.includes('.mp4') && v.readyState >= 1 && !v.error; }""",
            timeout=120_000,
        )
        duration = page.locator("#driving-video video").evaluate("v => v.duration")
        browser.close()
    assert duration == pytest.approx(1.0, abs=0.2)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_narrow_phone_window(server):
    """At a phone's width (390 px) every tab is reachable without an overflow menu and the examples
    are not cut off."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(server, wait_until="domcontentloaded", timeout=120_000)
        page.locator("#source-image input[type=file]").wait_for(state="attached", timeout=120_000)
        for name in ("Animate", "Personalize", "Edit", "Live", "512² SR"):
            tab = page.get_by_role("tab", name=name)
            assert tab.is_visible(), name
            box = tab.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (name, box)
        for label in ("Astronaut, driven by a man talking", "Mona Lisa, driven by Franck"):
            example = page.get_by_text(label)
            box = example.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (label, box)
        browser.close()


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_edit_tab_updates_as_a_slider_moves(server, tmp_path):
    """The Edit tab: a photo, then a slider: the edited image changes without pressing anything."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server, wait_until="domcontentloaded", timeout=120_000)
        page.get_by_role("tab", name="Edit").click()
        page.locator("#edit-photo input[type=file]").set_input_files(str(REPO / "examples" / "astronaut.jpg"))
        page.locator("#edit-result img").wait_for(timeout=120_000)
        first = page.locator("#edit-result img").get_attribute("src")
        slider = page.get_by_label("Turn (°)", exact=False).first
        slider.fill("20")
        slider.dispatch_event("input")
        slider.dispatch_event("change")
        page.wait_for_function(
            "(old) => { const i = document.querySelector('#edit-result img'); return i && i.src !== old; }",
            arg=first, timeout=60_000,
        )
        page.screenshot(path=str(tmp_path / "edit.png"))
        browser.close()


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_two_faces_numbered_and_animated(server, tmp_path, astronaut, mona_lisa):
    """A photo with two people: the Animate tab shows them numbered, and /reenact animates the chosen one."""
    import cv2
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image
    from playwright.sync_api import sync_playwright

    ml = cv2.resize(mona_lisa, (round(mona_lisa.shape[1] * 512 / mona_lisa.shape[0]), 512), interpolation=cv2.INTER_AREA)
    photo = tmp_path / "two.png"
    Image.fromarray(np.concatenate([astronaut, ml], axis=1)).save(photo)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server, wait_until="domcontentloaded", timeout=120_000)
        page.locator("#source-image input[type=file]").wait_for(state="attached", timeout=120_000)
        page.locator("#source-image input[type=file]").set_input_files(str(photo))
        page.get_by_text("face 2").first.wait_for(timeout=60_000)  # the numbered boxes' legend
        assert page.get_by_text("face 1").first.is_visible()
        assert page.locator("#face-choice").is_visible()
        browser.close()
    short = tmp_path / "short.mp4"
    from metaportrait.video import VideoWriter, iter_frames

    with VideoWriter(short, fps=25) as w:
        for f in iter_frames(REPO / "examples" / "driving_webcam.mp4", max_frames=8):
            w.write(f)
    result = Client(server, verbose=False).predict(handle_file(str(photo)), handle_file(str(short)), "relative", False,
                                                   False, None, "all", ["all"], False, 0.0, api_name="/reenact")
    import av

    with av.open(str(result["video"] if isinstance(result, dict) else result)) as c:
        frame = next(c.decode(video=0))
    assert (frame.width, frame.height) == (512 + ml.shape[1] + (ml.shape[1] % 2), 512)


def test_gradio_client_dubs_a_source_video(server, tmp_path):
    """/reenact with a source video instead of a photo: the output has the source video's size."""
    import av
    from gradio_client import Client, handle_file

    from metaportrait.video import VideoWriter, iter_frames

    def clip(src, n, path):
        with VideoWriter(path, fps=25) as w:
            for f in iter_frames(src, max_frames=n):
                w.write(f)
        return path

    source = clip(REPO / "examples" / "driving_webcam.mp4", 10, tmp_path / "source.mp4")
    driver = clip(REPO / "examples" / "driving_speech.mp4", 10, tmp_path / "driver.mp4")
    result = Client(server, verbose=False).predict(None, handle_file(str(driver)), "relative", False, False, None,
                                                   "largest", ["all"], False, 0.0, handle_file(str(source)),
                                                   api_name="/reenact")
    with av.open(str(result["video"] if isinstance(result, dict) else result)) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 10 and (frames[0].width, frames[0].height) == (400, 300)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_live_tab_with_a_fake_webcam(server, tmp_path):
    """The Live tab: Chromium's fake camera plays a real talking clip; the animated photo streams back
    with an FPS readout."""
    import cv2
    from playwright.sync_api import sync_playwright

    from metaportrait.video import iter_frames

    cam = tmp_path / "cam.y4m"
    frames = list(iter_frames(REPO / "examples" / "driving_webcam.mp4", max_frames=50))
    h, w = frames[0].shape[:2]
    with open(cam, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode())
        for fr in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(fr, cv2.COLOR_RGB2YUV_I420).tobytes())
    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-video-capture={cam}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
        page = context.new_page()
        page.goto(server, wait_until="domcontentloaded", timeout=120_000)
        page.get_by_role("tab", name="Live").click()
        page.locator("#live-photo input[type=file]").set_input_files(str(REPO / "examples" / "astronaut.jpg"))
        page.get_by_text("Click to Access Webcam").click()
        page.locator("#live-webcam").get_by_role("button", name="capture photo").click()
        page.locator("#live-result img").wait_for(timeout=120_000)
        page.wait_for_function("() => (document.querySelector('#live-stats') || {}).innerText?.includes('FPS')",
                               timeout=120_000)
        first = page.locator("#live-result img").get_attribute("src")
        page.wait_for_function(
            "(old) => { const i = document.querySelector('#live-result img'); return i && i.src !== old; }",
            arg=first, timeout=60_000)  # frames keep coming
        page.get_by_role("button", name="Calibrate (neutral pose now)").click()
        browser.close()
