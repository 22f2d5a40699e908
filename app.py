"""MetaPortrait web demo (Gradio Blocks). Runs fully offline on the embedded weights.

Only UI wiring lives here: every handler is a thin call into ``metaportrait.pipeline``.
``demo`` is built at import (Hugging Face Spaces and ``gradio app.py`` pick it up);
``python app.py`` launches it.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from metaportrait.errors import MetaPortraitError  # noqa: E402
from metaportrait.io import InputLimits  # noqa: E402
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions  # noqa: E402
from metaportrait.weights import pack_personalization, personalization_kind, unpack_personalization  # noqa: E402

try:  # on a ZeroGPU Space, GPU work runs inside functions decorated with spaces.GPU
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:  # anywhere else: no-op

    def gpu(fn):
        return fn


HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"
MAX_VIDEO_SECONDS = float(os.environ.get("METAPORTRAIT_MAX_SECONDS", "30"))
MAX_UPLOAD = os.environ.get("METAPORTRAIT_MAX_UPLOAD", "50mb")
CONCURRENCY = int(os.environ.get("METAPORTRAIT_CONCURRENCY", "2"))
LIMITS = InputLimits(max_video_seconds=MAX_VIDEO_SECONDS)
OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="metaportrait-app-"))

WEIGHTS = os.environ.get("METAPORTRAIT_WEIGHTS")
_pipelines: OrderedDict[str, MetaPortraitPipeline] = OrderedDict()
_pipeline_lock = threading.Lock()


def get_pipeline(personal: str | None = None) -> MetaPortraitPipeline:
    """The pipeline (loaded lazily, so the UI starts at once), optionally with a personalized model:
    a LoRA adapter folder or a whole personalized pipeline folder (``--adapter full``)."""
    key = personal or ""
    with _pipeline_lock:
        if key not in _pipelines:
            if personal and personalization_kind(personal) == "pipeline":
                _pipelines[key] = MetaPortraitPipeline.from_pretrained(personal, limits=LIMITS)
            else:
                _pipelines[key] = MetaPortraitPipeline.from_pretrained(WEIGHTS, adapter=personal, limits=LIMITS)
            while len(_pipelines) > 3:  # bounded: the shared model and a couple of personalized ones
                _pipelines.popitem(last=False)
        _pipelines.move_to_end(key)
        return _pipelines[key]


def _personal_folder(use_personal: bool, session_folder: str | None, upload: str | None) -> str | None:
    """The personalized model to use: an uploaded .zip (API and UI), else this session's last one."""
    if upload:
        path = upload if isinstance(upload, str) else upload.name
        try:
            return str(unpack_personalization(path, Path(tempfile.mkdtemp(prefix="upload-", dir=OUTPUT_DIR))))
        except MetaPortraitError as exc:
            raise gr.Error(_friendly(exc, path)) from exc
    if not use_personal:
        return None
    if not session_folder:
        raise gr.Error("No personalized model yet: run the 'Personalize' tab first (or upload its .zip), "
                       "or untick the box.")
    return session_folder


@gpu
def reenact(source: str | None, driving: str | None, mode: str, paste_back: bool, use_personal: bool = False,
            personal_zip: str | None = None, face: str = "largest", parts: list[str] | None = None,
            hold_eyes_open: bool = False, smile: float = 0.0, source_video: str | None = None,
            session_folder: str | None = None, progress: gr.Progress = gr.Progress()) -> str:
    """Animate the source photo (or dub a source video) with the driving video; returns an H.264 mp4."""
    if source_video:
        source = source_video  # dubbing: the video keeps its head motion, its face takes the driver's mouth
    if not source:
        raise gr.Error("Please upload a source portrait photo (or a source video to dub).")
    if not driving:
        raise gr.Error("Please upload a driving video.")
    personal = _personal_folder(use_personal, session_folder, personal_zip)
    out = Path(tempfile.mkstemp(suffix=".mp4", dir=OUTPUT_DIR)[1])
    out.unlink()
    if personal and personalization_kind(personal) == "fewshot":  # Zakharov et al.: the person is in the model
        from metaportrait.fewshot_pipeline import FewShotPipeline

        progress(0, desc="Animating with the few-shot model")

        def report_fewshot(done: int, total: int, stage: str) -> None:
            progress((done, total) if total else None, desc="Animating", unit="frames")

        try:
            FewShotPipeline.from_pretrained(personal, limits=LIMITS).reenact(driving, out, progress=report_fewshot)
        except MetaPortraitError as exc:
            raise gr.Error(_friendly(exc, driving)) from exc
        return str(out)
    progress(0, desc="Loading the model")
    try:
        pipe = get_pipeline(personal)
    except MetaPortraitError as exc:
        raise gr.Error(str(exc)) from exc

    def report(done: int, total: int, stage: str) -> None:
        progress((done, total) if total else None, desc="Animating", unit="frames")

    try:
        options = ReenactOptions(
            mode=mode, paste_back=paste_back, parts=tuple(parts or ["all"]),
            eyes=0.7 if hold_eyes_open else None, smile=float(smile),
            face=None if face in (None, "", "largest") else ("all" if face == "all" else int(face)))
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    try:
        pipe.reenact(source, driving, out, options, progress=report)
    except MetaPortraitError as exc:
        raise gr.Error(_friendly(exc, source, driving)) from exc
    finally:
        _release_memory()
    return str(out)


_audio_models: dict[str, object] = {}


@gpu
def talk(photo: str | None, audio: str | None, text: str = "", head_motion: float = 1.0, seed: int = 0,
         parts: list[str] | None = None, hold_eyes_open: bool = False, smile: float = 0.0, use_personal: bool = False,
         personal_zip: str | None = None, session_folder: str | None = None,
         progress: gr.Progress = gr.Progress()) -> str:
    """Make the photo talk: an uploaded or recorded speech file, or typed text spoken by espeak-ng."""
    from metaportrait.speak import SpeakOptions, load_audio_model, speak, synthesize_speech

    if not photo:
        raise gr.Error("Please upload a portrait photo.")
    if not audio and not (text or "").strip():
        raise gr.Error("Please upload or record speech (or type a text to speak).")
    personal = _personal_folder(use_personal, session_folder, personal_zip)
    out = Path(tempfile.mkstemp(suffix=".mp4", dir=OUTPUT_DIR)[1])
    out.unlink()
    spoken = None
    try:
        options = SpeakOptions(head_motion=float(head_motion), seed=int(seed or 0), max_seconds=MAX_VIDEO_SECONDS,
                               controls=ReenactOptions(parts=tuple(parts or ["all"]), smile=float(smile),
                                                       eyes=0.7 if hold_eyes_open else None))
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    progress(0, desc="Loading the model")
    try:
        pipe = get_pipeline(personal)
        key = str(WEIGHTS or "")
        if key not in _audio_models:
            _audio_models[key] = load_audio_model(WEIGHTS, device=pipe.device)
        if not audio:
            spoken = audio = str(synthesize_speech(text))

        def report(done: int, total: int, stage: str) -> None:
            progress((done, total) if total else None, desc="Talking", unit="frames")

        speak(pipe, photo, audio, out, options, model=_audio_models[key], progress=report)
    except MetaPortraitError as exc:
        raise gr.Error(_friendly(exc, photo, audio or "")) from exc
    finally:
        if spoken:
            Path(spoken).unlink(missing_ok=True)
        _release_memory()
    return str(out)


def playable(video: str | None) -> str | None:
    """An uploaded video the browser cannot preview (e.g. FLV) is re-encoded to H.264 MP4."""
    from metaportrait.video import browser_playable, transcode_for_browser

    if not video or browser_playable(video):
        return video
    out = Path(tempfile.mkstemp(suffix=".mp4", dir=OUTPUT_DIR)[1])
    out.unlink()
    try:
        return str(transcode_for_browser(video, out, LIMITS))
    except MetaPortraitError as exc:
        raise gr.Error(_friendly(exc, video)) from exc


def _release_memory() -> None:
    """Give a finished job's memory back to the system: Python's garbage, then glibc's free lists
    (glibc keeps freed arenas mapped, so without this a served process only ever grows)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, Windows, musl): gc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _friendly(exc: Exception, *uploads: str) -> str:
    """The error message without the server's temporary upload folders."""
    msg = str(exc)
    for path in uploads:
        if path:
            msg = msg.replace(str(Path(path).parent) + os.sep, "")
    return msg


def _stream_job(work, history: list, cancel: threading.Event):
    """Run ``work()`` in a thread; yield every second while it runs. Closing the generator (the
    Cancel button, a closed tab) sets ``cancel`` so the training loop stops at its next step."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except Exception as exc:  # surfaced to the user by the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
            yield None
    finally:
        cancel.set()
    if "error" in outcome:
        raise gr.Error(f"Personalization failed: {outcome['error']}")
    yield outcome["result"]


def _loss_plot(history: list):
    import pandas as pd

    return pd.DataFrame(history or [(0, float("nan"), 0.0)], columns=["step", "loss", "seconds"])


@gpu
def personalize(video: str | None, photos: list[str] | None = None, seconds: float = 30, adapter_kind: str = "lora",
                family: str = "metaportrait"):
    """Fine-tune on the uploaded person within ``seconds``; streams (loss plot, before, after, .zip, folder)."""
    from metaportrait.person import collect_frames

    if family not in ("metaportrait", "fewshot"):
        raise gr.Error(f"unknown model family {family!r}")
    photos = [p if isinstance(p, str) else p.name for p in (photos or [])]
    if not video and not photos:
        raise gr.Error("Upload a short video of the person (or a few photos).")
    history: list[tuple[int, float, float]] = []
    cancel = threading.Event()
    t0 = time.perf_counter()
    candidates = None  # the MetaPortrait family's starting generators
    if family == "fewshot":  # Zakharov et al. 2019: fine-tune G and D on up to 32 frames (T = 32)
        from metaportrait.training.fewshot_finetune import FT_SCHEDULE
        from metaportrait.training.fewshot_finetune import personalize_fewshot as run_fewshot

        out_dir = Path(tempfile.mkdtemp(prefix="fewshot-", dir=OUTPUT_DIR))
        try:
            person = collect_frames(video, photos, size=256, max_frames=32, limits=LIMITS)
        except MetaPortraitError as exc:
            raise gr.Error(_friendly(exc, video or "", *photos)) from exc

        def on_step(step: int, losses: dict) -> bool:  # the content (reconstruction) term of L_G
            history.append((step, losses["loss_content"], time.perf_counter() - t0))
            return cancel.is_set()

        def work():
            return run_fewshot(person, out_dir, weights=WEIGHTS, steps=FT_SCHEDULE.steps, seconds=float(seconds),
                               callback=on_step)
    else:
        from metaportrait.training.personalize import MOUTH_WORK_SIZE, PersonalizeOptions, load_start_candidates
        from metaportrait.training.personalize import personalize as run_personalize

        try:
            candidates = load_start_candidates(WEIGHTS)
            size = candidates[0][0].config.image_size
            person = collect_frames(video, photos, size=size, max_frames=48, limits=LIMITS)
        except MetaPortraitError as exc:
            raise gr.Error(_friendly(exc, video or "", *photos)) from exc
        out_dir = Path(tempfile.mkdtemp(prefix="personal-", dir=OUTPUT_DIR))

        def on_progress(step: int, loss: float, elapsed: float) -> bool:
            history.append((step, loss, elapsed))
            return cancel.is_set()

        def work():  # the start (meta-learned or plain) is chosen on the person's held-back frames
            return run_personalize(person, out_dir, weights=WEIGHTS, progress=on_progress, candidates=candidates,
                                   options=PersonalizeOptions(seconds=float(seconds), adapter=adapter_kind,
                                                              mouth=size == MOUTH_WORK_SIZE))
    res = None
    for item in _stream_job(work, history, cancel):
        if item is None:
            yield _loss_plot(history), None, None, "", None, None
        else:
            res = item
    if cancel.is_set() and res is None:
        return
    kind = adapter_kind if family == "metaportrait" else "fewshot"
    packed = pack_personalization(out_dir, out_dir.with_name(f"{out_dir.name}-{kind}.zip"))
    before = getattr(res, "before", None)
    after = getattr(res, "after", None)
    summary = _personal_summary(res)
    del res, person, work, candidates  # a finished job keeps only its files
    _release_memory()
    yield _loss_plot(history), before, after, summary, str(packed), str(out_dir)


def _personal_summary(res) -> str:
    """What the personalization did, in a few lines: held-back error before/after, the step kept,
    and the mouth network's own check (MetaPortrait family), or the steps and times (few-shot)."""
    from metaportrait.training.personalize import PersonalizeResult, mouth_summary, start_summary

    if not isinstance(res, PersonalizeResult):
        steps = getattr(res, "steps", 0)
        return (f"Few-shot model: {getattr(res, 'frames', '?')} frames embedded in {res.embed_seconds:.1f} s, "
                f"{steps} fine-tuning steps in {res.finetune_seconds:.1f} s.")
    lines = [f"{res.steps} steps in {res.seconds:.0f} s on {res.num_frames} frames."]
    if res.validation:
        start, kept = res.validation[0][1], min(e for _, e in res.validation)
        lines.append(f"Held-back frames (never trained on): L1 {start:.4f} at the start → {kept:.4f} with the kept "
                     f"weights (step {res.best_step}; {100 * (start - kept) / max(start, 1e-9):.1f} % lower).")
    else:
        lines.append("Too few frames to hold any back: the last weights are kept.")
    if res.start_errors:
        lines.append(start_summary(res)[0].upper() + start_summary(res)[1:] + ".")
    if res.mouth is not None:
        lines.append(mouth_summary(res.mouth)[0].upper() + mouth_summary(res.mouth)[1:] + ".")
    return "\n\n".join(lines)


@gpu
def upscale(video: str | None, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
    """512² temporal super-resolution of a square face video, and a bicubic | SR comparison."""
    from metaportrait.superres import compare_video, load_sr_model, upscale_video

    if not video:
        raise gr.Error("Upload a face video, or send the last reenactment here.")
    out = Path(tempfile.mkstemp(suffix="_512.mp4", dir=OUTPUT_DIR)[1])
    cmp = Path(tempfile.mkstemp(suffix="_compare.mp4", dir=OUTPUT_DIR)[1])
    out.unlink()
    cmp.unlink()

    def stage(name: str):
        def report(done: int, total: int) -> None:
            progress((done, total), desc=name, unit="frames")
        return report

    try:
        progress(0.0, desc="Loading the super-resolution model")
        model = load_sr_model(WEIGHTS)
        upscale_video(video, out, model=model, progress=stage("1/2 Upscaling to 512²"), limits=LIMITS,
                      report=gr.Info)
        compare_video(video, cmp, model=model, progress=stage("2/2 Side-by-side with bicubic"), limits=LIMITS)
    except MetaPortraitError as exc:
        raise gr.Error(_friendly(exc, video)) from exc
    finally:
        _release_memory()
    return str(out), str(cmp)


_edit_sources: OrderedDict[str, object] = OrderedDict()


def _edit_source(photo: str):
    """The prepared source face of an uploaded photo (detection, crop, identity: done once per photo)."""
    with _pipeline_lock:
        cached = _edit_sources.get(photo)
    if cached is not None:
        return cached
    pipe = get_pipeline(None)
    try:
        src = pipe.prepare_source(photo)
    except MetaPortraitError as exc:
        raise gr.Error(_friendly(exc, photo)) from exc
    with _pipeline_lock:
        _edit_sources[photo] = src
        while len(_edit_sources) > 4:
            _edit_sources.popitem(last=False)
    return src


def faces_preview(photo: str | None):
    """The uploaded photo with its faces boxed and numbered left to right, and the face choices."""
    if not photo:
        return None, gr.update(choices=["largest"], value="largest")
    try:
        faces = get_pipeline(None).prepare_sources(photo)
    except MetaPortraitError:
        return None, gr.update(choices=["largest"], value="largest")
    annotations = []
    for i, f in enumerate(faces, start=1):
        x0, y0, x1, y1 = (int(round(v)) for v in f.crop.points_to_image(f.landmarks).reshape(-1, 2).min(0).tolist()
                          + f.crop.points_to_image(f.landmarks).reshape(-1, 2).max(0).tolist())
        annotations.append(((x0, y0, x1, y1), f"face {i}"))
    choices = ["largest"] + [str(i) for i in range(1, len(faces) + 1)] + (["all"] if len(faces) > 1 else [])
    visible = len(faces) > 1
    return (gr.update(value=(faces[0].image, annotations), visible=visible),
            gr.update(choices=choices, value="largest", visible=visible))


def edit_start(photo: str | None):
    """A new photo: its current eye and mouth opening become the sliders' starting values."""
    from metaportrait.face.controls import eye_opening, mouth_opening

    if not photo:
        return None, gr.update(value=0.5), gr.update(value=0.3), None
    src = _edit_source(photo)
    eyes = round(min(1.0, eye_opening(src.landmarks)), 2)
    lips = round(min(1.0, mouth_opening(src.landmarks) / 0.55), 2)
    return src.face_at(512 if src.crop.side >= 512 else 256), eyes, lips, {"eyes": eyes, "lips": lips}


@gpu
def edit(photo: str | None, eyes: float = 0.5, lips: float = 0.3, smile: float = 0.0, brows: float = 0.0,
         yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, gaze_x: float = 0.0, gaze_y: float = 0.0,
         start: dict | None = None):
    """The photo edited by the sliders (no driving video); sliders at their starting values change nothing."""
    from metaportrait.pipeline import EditOptions

    if not photo:
        raise gr.Error("Upload a portrait photo to edit.")
    start = start or {}
    src = _edit_source(photo)
    options = EditOptions(
        eyes=None if start.get("eyes") == eyes else float(eyes),
        lips=None if start.get("lips") == lips else float(lips),
        smile=float(smile), brows=float(brows), yaw=float(yaw), pitch=float(pitch), roll=float(roll),
        gaze_x=float(gaze_x), gaze_y=float(gaze_y))
    try:
        return get_pipeline(None).edit(src, options)
    except (MetaPortraitError, ValueError) as exc:
        raise gr.Error(str(exc)) from exc


def live_frame(frame, photo: str | None, state: dict | None, parts: list[str] | None = None,
               hold_eyes_open: bool = False, smile: float = 0.0):
    """One webcam frame in, the animated photo out (a per-user live session kept in ``state``)."""
    if frame is None or not photo:
        return None, state, "Upload a photo, then start the webcam."
    try:
        options = ReenactOptions(size=256, parts=tuple(parts or ["all"]), eyes=0.7 if hold_eyes_open else None,
                                 smile=float(smile))
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    if state is None or state.get("photo") != photo:
        if state is not None:
            state["session"].close()
        src = _edit_source(photo)
        state = {"photo": photo, "session": get_pipeline(None).live(src, options)}
    session = state["session"]
    session.set_controls(options)
    out = session(np.asarray(frame))
    return out, state, f"{1000.0 / max(session.ms_per_frame, 1e-6):.1f} FPS on the server ({session.ms_per_frame:.0f} ms a frame)"


def live_calibrate(state: dict | None):
    """The next webcam frame becomes the neutral pose."""
    if state is not None:
        state["session"].calibrate()
    return state


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="MetaPortrait") as demo:
        gr.Markdown(
            "# MetaPortrait\n"
            "Animate any portrait photo with the motion of a driving video (one-shot reenactment with "
            "dense landmarks, a warping network and an identity-preserving refinement network). "
            "Every output is labelled **AI-generated**. Do not use it to impersonate real people."
        )
        adapter_state = gr.State(None)  # folder of this user's personalization adapter
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone the tabs wrap instead of hiding in a menu
            with gr.Tab("Animate", id="animate"):
                with gr.Row():
                    with gr.Column():
                        source = gr.Image(label="Source portrait", type="filepath", sources=["upload", "clipboard"],
                                          elem_id="source-image")
                        faces_box = gr.AnnotatedImage(label="Faces in the photo (numbered from the left)", visible=False)
                        face = gr.Dropdown(["largest"], value="largest", label="Face to animate", visible=False,
                                           allow_custom_value=True, elem_id="face-choice",
                                           info="a number from the boxes above, or all of them")
                        with gr.Accordion("…or dub a video instead of a photo", open=False):
                            source_video = gr.Video(label="Source video (keeps its head motion and background; "
                                                          "its mouth follows the driver)", sources=["upload"],
                                                    elem_id="source-video")
                        driving = gr.Video(label=f"Driving video (≤ {MAX_VIDEO_SECONDS:g} s)", sources=["upload"],
                                           elem_id="driving-video")
                        mode = gr.Radio(
                            ["relative", "absolute"], value="relative", label="Motion transfer",
                            info="relative: another person drives (keeps the source's face shape); absolute: same person",
                        )
                        paste_back = gr.Checkbox(label="Whole photo at its own resolution (else the face crop, 512² when the photo has the pixels)",
                                                 value=False)
                        use_personal = gr.Checkbox(label="Use my personalized model (from the Personalize tab)",
                                                   value=False)
                        personal_zip = gr.File(label="…or upload a personalized model (.zip from the Personalize tab)",
                                               file_types=[".zip"], value=None, elem_id="personal-zip")
                        with gr.Accordion("Motion control", open=False):
                            parts = gr.CheckboxGroup(["all", "head", "expression", "eyes", "lips"], value=["all"],
                                                     label="Which motion to transfer",
                                                     info="head: pose only; expression: all but the pose; "
                                                          "lips: only the mouth (dubbing); eyes: blinks and gaze")
                            hold_eyes = gr.Checkbox(label="Keep the eyes open whatever the driver does", value=False)
                            smile = gr.Slider(-1, 1, value=0, step=0.05, label="Add a smile")
                        run = gr.Button("Animate", variant="primary")
                    with gr.Column():
                        result = gr.Video(label="Result", autoplay=True, elem_id="result-video", interactive=False,
                                          buttons=["download"])
                        to_sr = gr.Button("Send to 512² super-resolution")
                gr.Examples(
                    examples=[
                        [str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "driving_speech.mp4"), "relative", False],
                        [str(EXAMPLES / "mona_lisa.jpg"), str(EXAMPLES / "driving_franck.mp4"), "relative", True],
                    ],
                    inputs=[source, driving, mode, paste_back],
                    example_labels=["Astronaut, driven by a man talking (face crop)",
                                    "Mona Lisa, driven by Franck (whole painting)"],
                )
                driving.upload(playable, inputs=driving, outputs=driving, api_visibility="private")
                source.change(faces_preview, inputs=source, outputs=[faces_box, face], api_visibility="private")
                source_video.upload(playable, inputs=source_video, outputs=source_video, api_visibility="private")
                run.click(reenact, inputs=[source, driving, mode, paste_back, use_personal, personal_zip, face, parts,
                                           hold_eyes, smile, source_video, adapter_state],
                          outputs=result, api_name="reenact", concurrency_limit=CONCURRENCY)
            with gr.Tab("Personalize", id="personalize"):
                gr.Markdown("Upload a short video of one person (or a few photos). The model is fine-tuned on them "
                            "for the chosen time, starting from the meta-learned weights; every 8th frame is held back "
                            "and the weights that reproduce those frames best are the ones kept. The result can be used "
                            "at once in the Animate tab and downloaded as one .zip (safetensors + JSON) to use later.")
                with gr.Row():
                    with gr.Column():
                        p_video = gr.Video(label="Video of the person", sources=["upload"])
                        p_photos = gr.File(label="…or photos", file_count="multiple", file_types=["image"], value=None)
                        p_seconds = gr.Slider(10, 300, value=30, step=5, label="Time budget (seconds)",
                                              info="fewshot: its 200 fine-tuning steps take up to 5 minutes")
                        p_kind = gr.Radio(["lora", "full"], value="lora", label="Save as",
                                          info="lora: a small adapter on top of the shared weights; full: all weights")
                        p_family = gr.Radio(["metaportrait", "fewshot"], value="metaportrait", label="Model family",
                                            info="fewshot: Zakharov et al. 2019 (up to 32 frames, fine-tuned within the "
                                                 "time budget; the curve is the content loss; the source photo is then ignored)")
                        with gr.Row():
                            p_run = gr.Button("Personalize", variant="primary")
                            p_cancel = gr.Button("Cancel", variant="stop")
                    with gr.Column():
                        p_plot = gr.LinePlot(x="step", y="loss", title="Training loss", label="Training loss", height=220)
                        p_before = gr.Image(label="Before (source | target | output)", interactive=False)
                        p_after = gr.Image(label="After", interactive=False)
                        p_summary = gr.Markdown(label="What personalization did")
                        p_files = gr.File(label="Personalized model (.zip: safetensors + JSON)", interactive=False)
                p_video.upload(playable, inputs=p_video, outputs=p_video, api_visibility="private")
                p_event = p_run.click(personalize, inputs=[p_video, p_photos, p_seconds, p_kind, p_family],
                                      outputs=[p_plot, p_before, p_after, p_summary, p_files, adapter_state],
                                      api_name="personalize",
                                      concurrency_limit=1, concurrency_id="personalize")
                p_cancel.click(None, cancels=[p_event], api_visibility="private")
                # the few-shot family has no LoRA/full choice: hide what the choice ignores
                p_family.change(lambda f: gr.update(visible=f == "metaportrait"), inputs=p_family, outputs=p_kind,
                                api_visibility="private")
            with gr.Tab("Edit", id="edit"):
                gr.Markdown("Edit a portrait without a driving video: every slider moves the face's dense landmarks and "
                            "the same renderer draws the result (the image updates as a slider moves).")
                e_start = gr.State(None)
                with gr.Row():
                    with gr.Column():
                        e_photo = gr.Image(label="Portrait", type="filepath", sources=["upload", "clipboard"],
                                           elem_id="edit-photo", height=280)
                        e_eyes = gr.Slider(0, 1, value=0.5, step=0.02, label="Eyes (closed … wide open)")
                        e_lips = gr.Slider(0, 1, value=0.3, step=0.02, label="Mouth (closed … wide open)")
                        e_smile = gr.Slider(-1, 1, value=0, step=0.05, label="Smile")
                        e_brows = gr.Slider(-1, 1, value=0, step=0.05, label="Eyebrows")
                        with gr.Row():
                            e_yaw = gr.Slider(-30, 30, value=0, step=1, label="Turn (°)")
                            e_pitch = gr.Slider(-30, 30, value=0, step=1, label="Nod (°)")
                            e_roll = gr.Slider(-30, 30, value=0, step=1, label="Tilt (°)")
                        with gr.Row():
                            e_gx = gr.Slider(-1, 1, value=0, step=0.05, label="Gaze left … right")
                            e_gy = gr.Slider(-1, 1, value=0, step=0.05, label="Gaze up … down")
                    with gr.Column():
                        e_out = gr.Image(label="Edited", interactive=False, format="png", buttons=["download"],
                                         elem_id="edit-result", height=560)
                e_inputs = [e_photo, e_eyes, e_lips, e_smile, e_brows, e_yaw, e_pitch, e_roll, e_gx, e_gy, e_start]
                e_photo.change(edit_start, inputs=e_photo, outputs=[e_out, e_eyes, e_lips, e_start],
                               api_visibility="private")
                first = True
                for slider in e_inputs[1:-1]:
                    slider.change(edit, inputs=e_inputs, outputs=e_out, trigger_mode="always_last",
                                  show_progress="hidden", api_name="edit" if first else None,
                                  api_visibility="public" if first else "private")
                    first = False
            with gr.Tab("Live", id="live"):
                gr.Markdown("Animate a photo with your webcam. Look straight at the camera with a neutral face and press "
                            "**Calibrate** (the first frame is used until you do).")
                l_state = gr.State(None)
                with gr.Row():
                    with gr.Column():
                        l_photo = gr.Image(label="Portrait", type="filepath", sources=["upload", "clipboard"],
                                           elem_id="live-photo", height=260)
                        l_cam = gr.Image(label="Webcam", sources=["webcam"], streaming=True, type="numpy",
                                         elem_id="live-webcam")
                        l_calibrate = gr.Button("Calibrate (neutral pose now)")
                        l_parts = gr.CheckboxGroup(["all", "head", "expression", "eyes", "lips"], value=["all"],
                                                   label="Which motion to transfer")
                        l_eyes = gr.Checkbox(label="Keep the eyes open", value=False)
                        l_smile = gr.Slider(-1, 1, value=0, step=0.05, label="Add a smile")
                    with gr.Column():
                        l_out = gr.Image(label="Live result", interactive=False, elem_id="live-result")
                        l_stats = gr.Markdown("", elem_id="live-stats")
                l_cam.stream(live_frame, inputs=[l_cam, l_photo, l_state, l_parts, l_eyes, l_smile],
                             outputs=[l_out, l_state, l_stats],
                             stream_every=0.1, time_limit=600, concurrency_limit=CONCURRENCY, api_visibility="private")
                l_calibrate.click(live_calibrate, inputs=l_state, outputs=l_state, api_visibility="private")
            with gr.Tab("Talk", id="talk"):
                from metaportrait.speak import espeak_available

                gr.Markdown("Make a photo talk from speech: upload or record it (wav/mp3/m4a/flac, or a video's "
                            "sound)" + (", or type a text to speak" if espeak_available() else "") + ". The mouth "
                            "follows the speech; the head moves, blinks and raises its brows as speakers do.")
                with gr.Row():
                    with gr.Column():
                        t_photo = gr.Image(label="Portrait", type="filepath", sources=["upload", "clipboard"],
                                           elem_id="talk-photo")
                        t_audio = gr.Audio(label=f"Speech (≤ {MAX_VIDEO_SECONDS:g} s)", sources=["upload", "microphone"],
                                           type="filepath", elem_id="talk-audio")
                        t_text = gr.Textbox(label="…or type what to say (spoken offline by espeak-ng)", lines=2,
                                            visible=espeak_available(), elem_id="talk-text")
                        t_head = gr.Slider(0, 2, value=1, step=0.1, label="Head motion (0 = still)")
                        t_seed = gr.Number(value=0, precision=0, label="Seed (same seed, same motion)")
                        with gr.Accordion("Motion control", open=False):
                            t_parts = gr.CheckboxGroup(["all", "head", "expression", "eyes", "lips"], value=["all"],
                                                       label="Which motion to keep")
                            t_eyes = gr.Checkbox(label="Keep the eyes open", value=False)
                            t_smile = gr.Slider(-1, 1, value=0, step=0.05, label="Add a smile")
                        t_run = gr.Button("Talk", variant="primary")
                    with gr.Column():
                        t_out = gr.Video(label="Result", autoplay=True, interactive=False, buttons=["download"],
                                         elem_id="talk-result")
                gr.Examples(examples=[[str(EXAMPLES / "mona_lisa.jpg"), str(EXAMPLES / "driving_speech.mp4")]],
                            inputs=[t_photo, t_audio], example_labels=["Mona Lisa speaking a man's words"])
                t_run.click(talk, inputs=[t_photo, t_audio, t_text, t_head, t_seed, t_parts, t_eyes, t_smile,
                                          use_personal, personal_zip, adapter_state],
                            outputs=t_out, api_name="talk", concurrency_limit=CONCURRENCY)
            with gr.Tab("512² SR", id="superres"):
                gr.Markdown("Temporal super-resolution of a 256² face video to 512² (3D U-Net + StyleGAN2 prior), "
                            "filtered along the video's motion against flicker, with a side-by-side comparison "
                            "against bicubic upsampling. A video that is not a square face crop has its face found, "
                            "upscaled and pasted back at twice its size.")
                with gr.Row():
                    with gr.Column():
                        s_video = gr.Video(label="A face video (a reenactment, or any video with a face)", sources=["upload"])
                        s_run = gr.Button("Upscale to 512²", variant="primary")
                    with gr.Column():
                        s_out = gr.Video(label="512² result", interactive=False, buttons=["download"])
                        s_cmp = gr.Video(label="bicubic | super-resolution", interactive=False, buttons=["download"])
                s_video.upload(playable, inputs=s_video, outputs=s_video, api_visibility="private")
                s_run.click(upscale, inputs=s_video, outputs=[s_out, s_cmp], api_name="upscale",
                            concurrency_limit=CONCURRENCY)
                to_sr.click(lambda v: v, inputs=result, outputs=s_video, api_visibility="private")
    return demo


demo = build_demo()
demo.queue(max_size=32, default_concurrency_limit=CONCURRENCY)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_UPLOAD,
    )
