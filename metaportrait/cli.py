"""``metaportrait`` console entry point: one command, several subcommands.

Each subcommand imports its module lazily, so ``metaportrait --help`` is fast. Errors of the
package (bad input, missing weights), and OS or value errors, print one clear line and exit with
status 2; ``--debug`` anywhere on the command line shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _reenact(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from metaportrait.pipeline import MetaPortraitPipeline, ReenactOptions

    options = ReenactOptions(
        mode=args.mode,
        paste_back=args.paste_back,
        visible_label=not args.no_visible_label,
        batch_size=args.batch_size,
        max_seconds=args.max_seconds,
        size=None if args.size == "auto" else int(args.size),
        full_head=not args.face_only,
        neutral_mouth=args.neutral_mouth,
        parts=tuple(args.parts.split(",")),
        motion_scale=args.motion_scale,
        pose_scale=args.pose_scale,
        eyes=args.eyes,
        lips=args.lips,
        smile=args.smile,
        face=None if args.face is None else ("all" if args.face == "all" else int(args.face)),
        audio=args.audio,
        super_resolution=args.sr,
    )
    pipe = MetaPortraitPipeline.from_pretrained(args.weights, device=args.device, adapter=args.adapter,
                                                backend=args.backend, mouth_interior=not args.no_mouth,
                                                eye_interior=not args.no_eyes_net)
    bar = tqdm(total=0, unit="frame", desc="reenact", disable=args.quiet)

    def progress(done: int, total: int, stage: str) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = pipe.reenact(args.source, args.driving, args.output, options, progress=progress)
    finally:
        bar.close()  # before any error line, so the last thing a user sees is the error, not the bar
    t = result.timings
    print(
        f"wrote {result.output_path} ({result.num_frames} frames at {result.fps:g} fps"
        f"{', audio kept' if result.has_audio else ''}); "
        f"landmarks {t.get('landmarks', 0):.1f}s, generation {t.get('generation', 0):.1f}s, "
        f"render {t.get('render', 0):.1f}s, "
        + (f"super-resolution {t['super_resolution']:.1f}s, " if "super_resolution" in t else "")
        + f"encoding {t.get('encoding', 0):.1f}s, "
        f"{result.fps_end_to_end:.1f} FPS end to end"
    )
    return 0


def _add_reenact(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reenact", help="animate a portrait photo with the motion of a driving video")
    p.add_argument("--source", required=True,
                   help="portrait photo (jpg/png/webp...), or a video: its face takes the driver's expression while "
                        "its own head motion and background stay (dubbing)")
    p.add_argument("--audio", choices=["driving", "source"], default="driving",
                   help="a video source: keep the driving video's audio (default) or the source's")
    p.add_argument("--driving", required=True, help="driving video (mp4/webm/mov...)")
    p.add_argument("--output", required=True, help="output .mp4 (H.264, with the driving audio)")
    p.add_argument("--weights", default=None, help="pipeline folder or Hub repo id (default: embedded weights/)")
    p.add_argument("--no-mouth", action="store_true",
                   help="do not draw the inside of an opening mouth with the mouth-interior network (the warp alone)")
    p.add_argument("--no-eyes-net", action="store_true",
                   help="do not draw closing eyelids with the eye-interior network (the warp alone)")
    p.add_argument("--adapter", default=None, help="personalization adapter folder (metaportrait personalize)")
    p.add_argument("--mode", choices=["absolute", "relative"], default="relative",
                   help="absolute: same person; relative: cross-identity (default)")
    p.add_argument("--paste-back", action="store_true",
                   help="write the whole photo at its own resolution with the head moved (else the face crop)")
    p.add_argument("--size", choices=["auto", "256", "512", "1024"], default="auto",
                   help="face-crop output side (auto: 512 when the photo has ≥ 512 px across the crop, else 256)")
    p.add_argument("--sr", action="store_true",
                   help="a face with fewer than 512 px across in the photo is rendered at 256² and upscaled to 512² by "
                        "the temporal super-resolution network (slower: a few frames a second on a CPU); a face that "
                        "has the pixels is rendered at 512² directly (and a line says SR was skipped)")
    p.add_argument("--neutral-mouth", action="store_true",
                   help="relative mode: transfer the expression relative to closed-mouth estimates of both faces, "
                        "so an open-mouthed photo can close its mouth (a warp squeezes visible teeth: off by default)")
    p.add_argument("--face-only", action="store_true",
                   help="move only the face mesh (hair, ears and neck stay still; the older geometry)")
    p.add_argument("--parts", default="all",
                   help="which motion to transfer, comma-separated: all | head (rigid pose) | expression (all but the "
                        "pose) | eyes (blinks, gaze) | lips (dubbing); e.g. head,lips")
    p.add_argument("--motion-scale", type=float, default=1.0, help="exaggerate (> 1) or damp (< 1) the expression")
    p.add_argument("--pose-scale", type=float, default=1.0, help="scale the head-pose change")
    p.add_argument("--eyes", type=float, default=None, help="hold the eye opening (0 closed … 1 wide open)")
    p.add_argument("--lips", type=float, default=None, help="hold the mouth opening (0 closed … 1 wide open)")
    p.add_argument("--smile", type=float, default=0.0, help="add a smile (−1 … 1)")
    p.add_argument("--face", default=None,
                   help="which face of a photo with several people: N (1 = leftmost) or 'all' (implies --paste-back); "
                        "default: the largest")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--backend", choices=("auto", "eager", "onnx", "compile"), default="auto",
                   help="how the networks run: auto (ONNX Runtime on the CPU, PyTorch on a GPU) | eager | onnx | compile")
    p.add_argument("--max-seconds", type=float, default=None, help="use only the first N seconds of the driving video")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-visible-label", action="store_true",
                   help="omit the visible 'AI-generated' mark (the metadata label is always written)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_reenact)


def _edit(args: argparse.Namespace) -> int:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from metaportrait.pipeline import EditOptions, MetaPortraitPipeline
    from metaportrait.video import AI_GENERATED_COMMENT, check_output_path

    output = check_output_path(args.output, (".png", ".jpg", ".jpeg", ".webp"))
    options = EditOptions(
        eyes=args.eyes, lips=args.lips, smile=args.smile, brows=args.brows, yaw=args.yaw, pitch=args.pitch,
        roll=args.roll, gaze_x=args.gaze_x, gaze_y=args.gaze_y, size=None if args.size == "auto" else int(args.size),
        paste_back=args.paste_back, visible_label=not args.no_visible_label,
    )
    pipe = MetaPortraitPipeline.from_pretrained(args.weights, device=args.device, mouth_interior=not args.no_mouth,
                                                eye_interior=not args.no_eyes_net)
    image = pipe.edit(pipe.prepare_source(args.source), options)
    tmp = output.with_name(f".{output.name}.partial{output.suffix}")
    try:
        pil = Image.fromarray(image)
        if output.suffix.lower() == ".png":
            info = PngInfo()
            info.add_text("Comment", AI_GENERATED_COMMENT)
            pil.save(tmp, pnginfo=info)
        else:
            pil.save(tmp, quality=95)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {output} ({image.shape[1]}×{image.shape[0]})")
    return 0


def _add_edit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit", help="edit a portrait without a driving video (eyes, lips, smile, head rotation, gaze)")
    p.add_argument("--source", required=True, help="portrait photo")
    p.add_argument("--output", required=True, help="output image (.png/.jpg/.webp)")
    p.add_argument("--eyes", type=float, default=None, help="eye opening, 0 closed … 1 wide open (default: as is)")
    p.add_argument("--lips", type=float, default=None, help="mouth opening, 0 closed … 1 wide open (default: as is)")
    p.add_argument("--smile", type=float, default=0.0, help="−1 … 1")
    p.add_argument("--brows", type=float, default=0.0, help="raise (> 0) or lower (< 0) the eyebrows, −1 … 1")
    p.add_argument("--yaw", type=float, default=0.0, help="turn the head, degrees (−45 … 45)")
    p.add_argument("--pitch", type=float, default=0.0, help="nod, degrees (−45 … 45)")
    p.add_argument("--roll", type=float, default=0.0, help="tilt, degrees (−45 … 45)")
    p.add_argument("--gaze-x", type=float, default=0.0, help="look left (< 0) or right (> 0), −1 … 1")
    p.add_argument("--gaze-y", type=float, default=0.0, help="look up (< 0) or down (> 0), −1 … 1")
    p.add_argument("--size", choices=["auto", "256", "512", "1024"], default="auto")
    p.add_argument("--paste-back", action="store_true", help="the whole photo at its own resolution")
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-mouth", action="store_true", help="do not draw the mouth interior (the warp alone)")
    p.add_argument("--no-eyes-net", action="store_true", help="do not draw closed eyelids with the eye network (the warp alone)")
    p.add_argument("--no-visible-label", action="store_true",
                   help="omit the visible 'AI-generated' mark (PNG files always carry it in their metadata)")
    p.set_defaults(func=_edit)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_reenact, _add_edit]

# Subcommands whose options live with their module: ``metaportrait NAME ARGS`` runs
# ``module.main(ARGS)`` (each module's own argparse gives ``--help``).
DELEGATED: dict[str, tuple[str, str]] = {
    "prepare-data": ("metaportrait.training.prepare", "turn a folder of talking-head videos into a training set"),
    "train-base": ("metaportrait.training.train_base", "train the base model (warping, then warping + refinement)"),
    "evaluate": ("metaportrait.evaluation.reenactment", "evaluate weights against no-motion and the mesh warp"),
    "meta-train": ("metaportrait.training.meta_train", "Reptile meta-learning of a personalizable initialisation"),
    "personalize": ("metaportrait.training.personalize", "adapt the model to one person in seconds (adapter or full)"),
    "train-mouth": ("metaportrait.training.train_mouth", "train the mouth-interior network (teeth, tongue)"),
    "train-eyes": ("metaportrait.training.train_eyes", "train the eye-interior network (closing eyelids)"),
    "train-sr": ("metaportrait.training.train_sr", "train the temporal super-resolution network"),
    "upscale": ("metaportrait.superres", "upscale a 256² face video to 512² (temporal super-resolution)"),
    "train-fewshot": ("metaportrait.training.fewshot", "meta-learn the few-shot model of Zakharov et al. 2019"),
    "reenact-fewshot": ("metaportrait.fewshot_pipeline", "reenact a few-shot personalized model with a driving video"),
    "live": ("metaportrait.live", "animate a photo with a camera (or a video file standing in for one)"),
    "speak": ("metaportrait.speak", "make a photo talk: a portrait + a speech recording (or typed text) -> a video"),
    "prepare-audio": ("metaportrait.training.speech_data", "landmarks + speech of the talking clips of a prepared set"),
    "train-audio": ("metaportrait.training.train_speech", "train the audio-to-motion model of `speak`"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaportrait", description=__doc__.splitlines()[0])
    from metaportrait import __version__

    parser.add_argument("--version", action="version", version=f"metaportrait {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for name, (_module, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from metaportrait.errors import MetaPortraitError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # full tracebacks for bug reports
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv else None
    try:
        if command in DELEGATED:
            import importlib

            module = importlib.import_module(DELEGATED[command][0])
            return int(module.main(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except MetaPortraitError as exc:
        if debug:
            raise
        print(f"metaportrait {command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # a disk full, a permission, a bad value: one line, not a traceback
        if debug:
            raise
        what = f"{exc.strerror}: '{exc.filename}'" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"metaportrait {command}: error: {what} (run with --debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
