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
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from metaportrait.errors import MetaPortraitError  # noqa: E402
from metaportrait.io import InputLimits  # noqa: E402
from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions  # noqa: E402

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

_pipeline: MetaPortraitPipeline | None = None
_pipeline_lock = threading.Lock()


def get_pipeline() -> MetaPortraitPipeline:
    """Load the pipeline once (lazily, so the UI starts at once)."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is None:
            _pipeline = MetaPortraitPipeline.from_pretrained(os.environ.get("METAPORTRAIT_WEIGHTS"), limits=LIMITS)
        return _pipeline


@gpu
def reenact(source: str | None, driving: str | None, mode: str, paste_back: bool,
            progress: gr.Progress = gr.Progress()) -> str:
    """Animate the source photo with the driving video; returns the path of an H.264 mp4."""
    if not source:
        raise gr.Error("Please upload a source portrait photo.")
    if not driving:
        raise gr.Error("Please upload a driving video.")
    progress(0, desc="Loading the model")
    pipe = get_pipeline()
    out = Path(tempfile.mkstemp(suffix=".mp4", dir=OUTPUT_DIR)[1])
    out.unlink()

    def report(done: int, total: int, stage: str) -> None:
        progress((done, total) if total else None, desc="Animating", unit="frames")

    try:
        pipe.reenact(source, driving, out, ReenactOptions(mode=mode, paste_back=paste_back), progress=report)
    except MetaPortraitError as exc:
        raise gr.Error(_friendly(exc, source, driving)) from exc
    return str(out)


def _friendly(exc: Exception, *uploads: str) -> str:
    """The error message without the server's temporary upload folders."""
    msg = str(exc)
    for path in uploads:
        if path:
            msg = msg.replace(str(Path(path).parent) + os.sep, "")
    return msg


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="MetaPortrait") as demo:
        gr.Markdown(
            "# MetaPortrait\n"
            "Animate any portrait photo with the motion of a driving video (one-shot reenactment with "
            "dense landmarks, a warping network and an identity-preserving refinement network). "
            "Every output is labelled **AI-generated**. Do not use it to impersonate real people."
        )
        with gr.Tab("One-shot reenactment"):
            with gr.Row():
                with gr.Column():
                    source = gr.Image(label="Source portrait", type="filepath", sources=["upload", "clipboard"], elem_id="source-image")
                    driving = gr.Video(label=f"Driving video (≤ {MAX_VIDEO_SECONDS:g} s)", sources=["upload"], elem_id="driving-video")
                    mode = gr.Radio(
                        ["relative", "absolute"], value="relative", label="Motion transfer",
                        info="relative: another person drives (keeps the source's face shape); absolute: same person",
                    )
                    paste_back = gr.Checkbox(label="Paste the face back into the full photo", value=False)
                    run = gr.Button("Animate", variant="primary")
                with gr.Column():
                    result = gr.Video(label="Result", autoplay=True, elem_id="result-video")
            gr.Examples(
                examples=[
                    [str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "driving_speech.mp4"), "relative", False],
                    [str(EXAMPLES / "mona_lisa.jpg"), str(EXAMPLES / "driving_franck.mp4"), "relative", True],
                ],
                inputs=[source, driving, mode, paste_back],
            )
            run.click(reenact, inputs=[source, driving, mode, paste_back], outputs=result,
                      api_name="reenact", concurrency_limit=CONCURRENCY)
    return demo


demo = build_demo()
demo.queue(max_size=32, default_concurrency_limit=CONCURRENCY)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_UPLOAD,
    )
