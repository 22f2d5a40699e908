"""Fast personalization (MetaPortrait §3.2 "fast personalization"; docs/METHOD.md §8), the training side.

Fine-tune the generator on frames of one person, starting from the meta-learned weights (the
``meta`` component of a pipeline folder; the base weights when there is none), with the base
objective and a step or wall-clock budget. A few of the person's frames are held back and the
weights with the lowest error on them are the ones kept (early stopping). The result is either a small low-rank adapter
(``adapter.safetensors`` + ``adapter_config.json``, loaded on top of the same weights by
``MetaPortraitPipeline.from_pretrained(..., adapter=DIR)``) or a full pipeline folder.

This is training code: the inference pipelines only load what it writes. The top layer (``app.py``,
``metaportrait personalize``) calls :func:`personalize` here, or
:func:`~metaportrait.training.fewshot_finetune.personalize_fewshot` for the few-shot family.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from metaportrait.mouth import FILL_FILE, SOURCE_MARGIN, fill_strength, mouth_opening
from metaportrait.person import PersonFrames, collect_frames
from metaportrait.tensors import to_uint8
from metaportrait.training.samples import collate_pairs, make_pair
from metaportrait.training.train_mouth import WORK as MOUTH_WORK_SIZE  # the mouth pairs' frame size

VAL_OPEN = 0.05  # held-back frames with at least this mouth opening are the mouth network's validation pairs

ProgressFn = Callable[[int, float, float], bool | None]
"""``progress(step, loss, elapsed_seconds)``; returning True stops early."""


@dataclass(frozen=True)
class PersonalizeOptions:
    steps: int | None = None
    seconds: float | None = 30.0
    adapter: Literal["lora", "full"] = "lora"
    rank: int = 8
    lr: float = 2e-4  # α of the paper's inner loop
    batch_size: int = 4
    max_frames: int = 64
    # the objective the embedded weights were trained with (configs/base_demo_sharp.json)
    objective: dict = field(default_factory=lambda: {
        "weights": {"warp_vgg": 0.0, "refine_vgg": 0.0, "identity": 0.0, "eye": 10.0, "mouth": 10.0, "adv": 0.0,
                    "feature_matching": 0.0},
        "pixel_l1": 10.0, "pixel_ssim": 10.0, "perceptual_network": "sface", "perceptual_pyramid": (0.5, 0.25)})
    seed: int = 0
    # Early stopping: every `validation_every` steps the output error on held-back frames of the
    # person (every round(1 / validation_fraction)-th frame, never trained on) is measured, and the
    # weights with the lowest error are the ones saved: the result is never worse than the start
    # on the person's own unseen frames. 0 disables (all frames train, the last weights are saved).
    validation_fraction: float = 0.125
    validation_every: int = 4
    # The person-specific mouth (MetaPortrait §3.2: personalization learns what the person's own
    # frames show, e.g. their teeth): when the pipeline has a mouth-interior network it is fine-tuned
    # on the person's frames too, for `mouth_share` of a seconds budget (the generator gets the rest)
    # or `mouth_steps` steps (default: `steps`), and kept only when it lowers the masked mouth error
    # on the held-back frames with an open mouth.
    mouth: bool = True
    mouth_share: float = 0.5
    mouth_steps: int | None = None
    mouth_lr: float = 1e-4
    # prior grids of the person's training pairs: the render path's full-head mesh warp ("head", what
    # the user sees: hair, ears and neck move with the face) or the face mesh alone ("face", how the
    # embedded base weights were trained)
    prior_mesh: Literal["face", "head"] = "head"

    def __post_init__(self) -> None:
        if self.prior_mesh not in ("face", "head"):
            raise ValueError(f"prior_mesh must be 'face' or 'head', got {self.prior_mesh!r}")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be in [0, 0.5), got {self.validation_fraction}")
        if self.validation_every < 1:
            raise ValueError(f"validation_every must be >= 1, got {self.validation_every}")
        if self.steps is None and self.seconds is None:
            raise ValueError("give steps or seconds (or both) as the personalization budget")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if not 0.0 < self.mouth_share < 1.0:
            raise ValueError(f"mouth_share must be in (0, 1), got {self.mouth_share}")
        if self.mouth_steps is not None and self.mouth_steps < 1:
            raise ValueError(f"mouth_steps must be >= 1, got {self.mouth_steps}")
        if self.adapter not in ("lora", "full"):
            raise ValueError(f"adapter must be 'lora' or 'full', got {self.adapter!r}")
        if self.rank < 1 or self.batch_size < 1 or self.max_frames < 2:
            raise ValueError(f"rank, batch_size >= 1 and max_frames >= 2 required, got {self.rank}, "
                             f"{self.batch_size}, {self.max_frames}")


@dataclass
class PersonalizeResult:
    output_dir: Path
    adapter: str
    component: str
    steps: int
    seconds: float
    losses: list[float]
    times: list[float]
    num_frames: int
    output_bytes: int
    before: np.ndarray | None = None  # preview (uint8 S×(3S)×3: source | target | output) before adaptation
    after: np.ndarray | None = None  # the same preview after adaptation
    validation: list[tuple[int, float]] = field(default_factory=list)  # (steps taken, held-back L1 in [0, 1])
    best_step: int | None = None  # the steps taken by the saved weights (None: no validation split)
    mouth: MouthPersonalization | None = None  # None: no mouth network to personalize
    start_errors: dict[str, float] = field(default_factory=dict)  # held-back L1 of each candidate start at step 0


@dataclass(frozen=True)
class MouthPersonalization:
    """What personalizing the mouth-interior network did."""

    steps: int
    seconds: float
    pairs: int
    error_before: float | None  # masked mouth L1 on the held-back open mouths (None: none held back)
    error_after: float | None
    kept: bool  # False: the fine-tuned network did not beat the shipped one and was not saved
    # the fill policy chosen on the held-back open mouths (only for a kept network): the mouth
    # crop's L1 when the network draws only where the mouth opens beyond the source's own (the
    # shipped policy) and when it draws every open mouth; source_margin None = every open mouth
    fill_errors: dict[str, float] | None = None
    source_margin: float | None = SOURCE_MARGIN


def split_validation(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) frame indices: every ``round(1 / fraction)``-th frame, from the second on,
    is held back; no validation when ``fraction`` is 0 or fewer than 4 frames (or one would be left)."""
    idx = np.arange(n)
    if fraction <= 0 or n < 4:
        return idx, idx[:0]
    every = max(2, round(1 / fraction))
    val = idx[1::every]
    if len(val) == 0 or n - len(val) < 2:
        return idx, idx[:0]
    return np.setdiff1d(idx, val), val


@torch.no_grad()
def heldout_errors(generator, objective, train: PersonFrames, frames: PersonFrames, batch_size: int = 8,
                   head_prior: bool = True) -> tuple[float, float]:
    """Mean L1 (in [0, 1] units) and mean PSNR (dB, :func:`~metaportrait.evaluation.metrics.psnr` of
    the uint8 images, an exact match counting as 100 dB) of the outputs for ``frames``, driven from
    ``train``'s first frame (the model's mode is left as it is)."""
    from metaportrait.evaluation.metrics import PSNR_CAP_DB, psnr

    l1s, psnrs = [], []
    for i in range(0, len(frames), batch_size):
        items = [make_pair(train.frames[0], frames.frames[j], train.landmarks[0], frames.landmarks[j],
                           head_prior=head_prior) for j in range(i, min(i + batch_size, len(frames)))]
        batch = collate_pairs(items)
        out = objective(generator, batch, stage="full").output.image.float().clamp(-1, 1)
        diff = (out - batch.driving) / 2
        l1s.append(diff.abs().mean(dim=(1, 2, 3)))
        psnrs.extend(min(PSNR_CAP_DB, psnr(a, b)) for a, b in zip(to_uint8(out), to_uint8(batch.driving)))
    return float(torch.cat(l1s).mean()), float(np.mean(psnrs))


class PersonPairs(torch.utils.data.Dataset):
    """Random source/driving pairs among one person's frames (same objective as base training)."""

    def __init__(self, person: PersonFrames, seed: int = 0, head_prior: bool = True) -> None:
        self.person, self.seed, self.head_prior = person, seed, head_prior

    def __len__(self) -> int:
        return len(self.person) * len(self.person)

    def __getitem__(self, index: int):
        n = len(self.person)
        s, d = divmod(index, n)
        p = self.person
        return make_pair(p.frames[s], p.frames[d], p.landmarks[s], p.landmarks[d], identity="person", clip_id="person",
                         head_prior=self.head_prior)

    def batch(self, step: int, batch_size: int):
        rng = np.random.default_rng([self.seed, step])
        return collate_pairs([self[int(i)] for i in rng.integers(len(self), size=batch_size)])


def load_start_generator(weights: str | Path | None):
    """(generator, component name, pipeline folder): the ``meta`` component when present, else ``generator``."""
    from metaportrait.models.generator import MetaPortraitGenerator
    from metaportrait.weights import component_folder, read_model_index, resolve_pipeline_folder

    folder = resolve_pipeline_folder(weights, components=("base", "meta"))
    index = read_model_index(folder)
    component = "meta" if index.get("meta") else "generator"
    return MetaPortraitGenerator.from_pretrained(component_folder(folder, index, component)), component, folder


def load_start_candidates(weights: str | Path | None) -> list[tuple[object, str]]:
    """[(generator, component)] of the pipeline folder's starting points for personalization: the
    meta-learned ``meta`` weights (when present) and the plain ``generator`` (base) weights."""
    from metaportrait.models.generator import MetaPortraitGenerator
    from metaportrait.weights import component_folder, read_model_index, resolve_pipeline_folder

    folder = resolve_pipeline_folder(weights, components=("base", "meta"))
    index = read_model_index(folder)
    out = []
    for component in ("meta", "generator"):
        path = component_folder(folder, index, component)
        if path is not None:
            out.append((MetaPortraitGenerator.from_pretrained(path), component))
    return out


def load_mouth_network(weights: str | Path | None):
    """The pipeline folder's mouth-interior network (fp32, strict), or None when it has none."""
    from metaportrait.models.mouth_interior import MouthInteriorNetwork
    from metaportrait.weights import component_folder, read_model_index, resolve_pipeline_folder

    folder = resolve_pipeline_folder(weights, components=("base", "mouth_interior"))
    mouth_dir = component_folder(folder, read_model_index(folder), "mouth_interior")
    return None if mouth_dir is None else MouthInteriorNetwork.from_pretrained(mouth_dir).float()


def personalize_mouth(network, train: PersonFrames, val: PersonFrames | None, options: PersonalizeOptions,
                      seconds: float | None, steps: int | None) -> MouthPersonalization:
    """Fine-tune ``network`` in place on ``train`` (:func:`~metaportrait.training.train_mouth.finetune_mouth`);
    when ``val`` has open mouths, restore the starting weights unless the held-back error fell."""
    from metaportrait.training.train_mouth import (MouthPairs, finetune_mouth, masked_error, validation_indices,
                                                   validation_pairs)

    cfg = network.config
    val_pairs = None
    if val is not None and len(val):
        arrays = validation_pairs(train.frames, train.landmarks, val.frames, val.landmarks, cfg.mouth_width,
                                  open_threshold=VAL_OPEN)
        if arrays:
            val_pairs = MouthPairs(arrays, cfg.crop_size, cfg.mouth_width, augment=False)
    start = {k: v.detach().clone() for k, v in network.state_dict().items()}
    before = masked_error(network, val_pairs) if val_pairs is not None else None
    info = finetune_mouth(network, np.ascontiguousarray(train.frames), np.asarray(train.landmarks),
                          seconds=seconds if seconds is not None else float("inf"), steps=steps,
                          lr=options.mouth_lr, batch_size=options.batch_size, seed=options.seed)
    after = masked_error(network, val_pairs) if val_pairs is not None else None
    kept = after is None or after < before
    if not kept:
        network.load_state_dict(start)
    fill_errors, margin = None, SOURCE_MARGIN
    if kept and val_pairs is not None:
        pairs = [(train.landmarks[s], val.landmarks[k]) for s, k in validation_indices(len(train), val.landmarks, VAL_OPEN)]
        fill_errors = {
            "beyond the source": fill_error(network, val_pairs, [fill_strength(t, s_) for s_, t in pairs]),
            "every open mouth": fill_error(network, val_pairs, [fill_strength(t, s_, source_margin=None) for s_, t in pairs]),
        }
        if fill_errors["every open mouth"] < fill_errors["beyond the source"]:
            margin = None
    return MouthPersonalization(steps=int(info["steps"]), seconds=float(info["seconds"]), pairs=int(info["pairs"]),
                                error_before=before, error_after=after, kept=kept, fill_errors=fill_errors,
                                source_margin=margin)


@torch.no_grad()
def fill_error(network, pairs, strengths: list[float]) -> float:
    """Mean L1 (in [0, 1] units) over the whole mouth crop of the rendered mouths of ``pairs``: the
    network's composite blended over the warp with each pair's fill ``strengths`` (0: the warp)."""
    from metaportrait.models.mouth_interior import composite

    if len(strengths) != len(pairs):
        raise ValueError(f"{len(strengths)} strengths for {len(pairs)} pairs")
    was_training = network.training
    network.eval()
    errs = []
    for i, strength in enumerate(strengths):
        x = pairs.sample(i, np.random.default_rng(i))
        w, lips, src, tgt, m = (x[k][None] for k in ("warped", "lips", "source", "target", "mask"))
        out = w + strength * (composite(w, network(w, lips, src).image, m) - w)
        errs.append(float((out - tgt).abs().mean()) / 2)
    network.train(was_training)
    return float(np.mean(errs))


def personalize(person: PersonFrames, output_dir: str | Path, *, weights: str | Path | None = None,
                options: PersonalizeOptions = PersonalizeOptions(), progress: ProgressFn | None = None,
                generator=None, component: str = "generator", mouth_network=None,
                candidates: list[tuple[object, str]] | None = None) -> PersonalizeResult:
    """Fine-tune on ``person`` and write an adapter (or a full pipeline folder) to ``output_dir``.

    ``generator`` may be given directly (e.g. the benchmark compares starting points); otherwise it
    is chosen between the ``candidates`` (default: :func:`load_start_candidates` of ``weights``) on the
    person's held-back frames. With
    ``options.mouth``, ``mouth_network`` (default: the pipeline folder's, when there is one) is
    personalized too and written to ``output_dir/mouth_interior`` when it beat the shipped one.
    """
    from metaportrait.adapters import add_lora, save_adapter
    from metaportrait.identity import load_identity_encoder
    from metaportrait.training.objective import GeneratorObjective, ObjectiveConfig
    from metaportrait.training.reptile import adapt
    from metaportrait.weights import write_model_index

    if generator is not None:
        candidates = [(generator, component)]
    elif candidates is None:
        candidates = load_start_candidates(weights)
    if generator is None and options.mouth and mouth_network is None:
        mouth_network = load_mouth_network(weights)
    if not options.mouth:
        mouth_network = None
    if mouth_network is not None and person.frames.shape[1] != MOUTH_WORK_SIZE:
        raise ValueError(f"the mouth network is personalized on {MOUTH_WORK_SIZE}² frames, got "
                         f"{person.frames.shape[1]}² (pass options.mouth=False for other sizes)")
    gen_seconds = options.seconds
    if mouth_network is not None and gen_seconds is not None:
        gen_seconds = options.seconds * (1.0 - options.mouth_share)
    size = candidates[0][0].config.image_size
    if person.frames.shape[1] != size:
        raise ValueError(f"frames are {person.frames.shape[1]}² but the generator works at {size}²")
    torch.manual_seed(options.seed)
    head = options.prior_mesh == "head"
    objective = GeneratorObjective(load_identity_encoder(None), ObjectiveConfig(**options.objective))
    train_idx, val_idx = split_validation(len(person), options.validation_fraction)
    train = PersonFrames(person.frames[train_idx], person.landmarks[train_idx])
    val = PersonFrames(person.frames[val_idx], person.landmarks[val_idx]) if len(val_idx) else None
    # the start: the meta-learned weights only where they reproduce the person's held-back frames
    # better than the plain (base) weights do before any step; without held-back frames, the base
    start_errors: dict[str, float] = {}
    if len(candidates) > 1 and val is not None:
        for gen, comp in candidates:
            gen.eval()
            start_errors[comp] = heldout_errors(gen, objective, train, val, head_prior=head)[0]
        generator, component = min(candidates, key=lambda c: start_errors[c[1]])
    else:
        generator, component = next((c for c in candidates if c[1] == "generator"), candidates[0])
    del candidates
    pairs = PersonPairs(train, seed=options.seed, head_prior=head)
    generator.eval()  # no batch statistics to carry: the adapter holds only weights
    if options.adapter == "lora":
        add_lora(generator, rank=options.rank)
    params = [p for p in generator.parameters() if p.requires_grad]

    def loss_fn(model, step: int) -> torch.Tensor:
        return objective(model, pairs.batch(step, options.batch_size), stage="full").loss

    history: list[tuple[int, float]] = []
    best: dict = {}

    def remember(done: int) -> None:
        err = heldout_errors(generator, objective, train, val, head_prior=head)[0]
        history.append((done, err))
        if not best or err < best["error"]:
            best.update(error=err, step=done, params=[p.detach().clone() for p in params])

    def on_step(step: int, loss: float, elapsed: float) -> bool | None:
        if val is not None and (step + 1) % options.validation_every == 0:
            remember(step + 1)
        return progress(step, loss, elapsed) if progress is not None else None

    preview_pair = (0, len(person) // 2)
    if mouth_network is not None:  # show the widest mouth: where the person-specific mouth is drawn
        preview_pair = (0, 1 + int(np.argmax([mouth_opening(lm) for lm in person.landmarks[1:]])))
    encoder = load_identity_encoder(None)
    before = render_preview(generator, encoder, person, *preview_pair, mouth=mouth_network)
    t0 = time.perf_counter()
    if val is not None:
        remember(0)
    result = adapt(generator, loss_fn, steps=options.steps, seconds=gen_seconds, lr=options.lr, params=params,
                   callback=on_step)
    if val is not None:
        if history[-1][0] != result.steps:
            remember(result.steps)
        with torch.no_grad():
            for p, kept in zip(params, best["params"]):
                p.copy_(kept)
    mouth = None
    if mouth_network is not None:
        mouth = personalize_mouth(mouth_network, train, val, options,
                                  seconds=None if options.seconds is None else options.seconds * options.mouth_share,
                                  steps=options.mouth_steps or options.steps)
    after = render_preview(generator, encoder, person, *preview_pair, mouth=mouth_network,
                           mouth_source_margin=SOURCE_MARGIN if mouth is None else mouth.source_margin)
    out = Path(output_dir)
    meta = {"component": component, "frames": len(person), "steps": result.steps, "seconds": result.seconds,
            "best_step": best.get("step"), "validation": history, "start_errors": start_errors,
            "options": {k: v for k, v in asdict(options).items() if k != "objective"},
            "mouth": None if mouth is None else asdict(mouth)}
    if options.adapter == "lora":
        save_adapter(generator, out, base_id=component, metadata=meta)
    else:
        generator.save_pretrained(out / "base")
        if mouth_network is not None:  # a pipeline folder keeps its mouth network, personalized or not
            mouth_network.save_pretrained(out / "mouth_interior")
        write_model_index(out, generator="base", mouth_interior="mouth_interior" if mouth_network is not None else None)
        (out / "personalization.json").write_text(json.dumps(meta, indent=2))
    if options.adapter == "lora" and mouth is not None and mouth.kept:
        mouth_network.save_pretrained(out / "mouth_interior")
    if mouth is not None and mouth.kept and mouth.fill_errors is not None:
        (out / "mouth_interior" / FILL_FILE).write_text(json.dumps(
            {"source_margin": mouth.source_margin, "fill_errors": mouth.fill_errors}, indent=2))
    size_bytes = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    return PersonalizeResult(output_dir=out, adapter=options.adapter, component=component, steps=result.steps,
                             seconds=time.perf_counter() - t0, losses=list(result.losses), times=list(result.times),
                             num_frames=len(person), output_bytes=size_bytes, before=before, after=after,
                             validation=history, best_step=best.get("step"), mouth=mouth,
                             start_errors=start_errors)


@torch.no_grad()
def render_preview(generator, encoder, person: PersonFrames, source: int, target: int, mouth=None,
                   mouth_source_margin: float | None = SOURCE_MARGIN) -> np.ndarray:
    """``source | target | output`` (uint8, one row): frame ``source`` driven by frame ``target``'s
    landmarks through the render path a pipeline with these networks draws (copies of them: the
    training ones are left as they are), the ``mouth`` network included."""
    import copy

    from metaportrait.pipeline import MetaPortraitPipeline

    p = person
    pipe = MetaPortraitPipeline(copy.deepcopy(generator), encoder, backend="eager",
                                mouth_interior=None if mouth is None else copy.deepcopy(mouth),
                                mouth_source_margin=mouth_source_margin)
    src = pipe.source_from_crop(np.ascontiguousarray(p.frames[source]), np.asarray(p.landmarks[source]))
    img = pipe.generate(src, [np.asarray(p.landmarks[target], np.float32)])[0]
    return np.concatenate([p.frames[source], p.frames[target], img], axis=1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metaportrait personalize",
                                 description="Adapt the model to one person in seconds (fast personalization).")
    ap.add_argument("--video", help="a short video of the person")
    ap.add_argument("--images", nargs="*", default=[], help="photos of the person")
    ap.add_argument("--base", default=None, help="pipeline folder or Hub repo id (default: embedded weights/)")
    ap.add_argument("--output", required=True, help="output folder (adapter or pipeline folder)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int)
    budget.add_argument("--seconds", type=float)
    ap.add_argument("--adapter", choices=["lora", "full"], default="lora")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--max-frames", type=int, default=64)
    ap.add_argument("--no-mouth", action="store_true",
                    help="do not personalize the mouth-interior network (by default it gets half of a --seconds budget)")
    ap.add_argument("--family", choices=["metaportrait", "fewshot"], default="metaportrait",
                    help="fewshot: the model of Zakharov et al. 2019 (T = up to --max-frames frames; fine-tuned for "
                         "200 steps by default, --steps 0 = feed-forward, --seconds caps the time)")
    args = ap.parse_args(argv)
    if not args.video and not args.images:
        ap.error("give --video and/or --images")
    from tqdm import tqdm

    from metaportrait.video import check_output_path

    check_output_path(args.output, kind="folder")  # before the training, not after it

    if args.family == "fewshot":
        from metaportrait.training.fewshot_finetune import FT_SCHEDULE, personalize_fewshot

        person = collect_frames(args.video, args.images, size=256, max_frames=args.max_frames)
        steps = FT_SCHEDULE.steps if args.steps is None else args.steps
        feed_forward = steps == 0
        bar = tqdm(total=0 if feed_forward else steps, unit="step", desc="few-shot FT")
        t_start = time.perf_counter()

        def on_step(step: int, losses: dict) -> None:
            bar.update(1)
            bar.set_postfix(content=f"{losses['loss_content']:.3f}", adv=f"{losses['loss_adv']:.3f}",
                            fm=f"{losses['loss_fm']:.3f}", d=f"{losses['loss_d']:.3f}",
                            s=f"{time.perf_counter() - t_start:.0f}")

        res = personalize_fewshot(person, args.output, weights=args.base, steps=steps, feed_forward=feed_forward,
                                  seconds=args.seconds, callback=on_step)
        bar.close()
        kind = "feed-forward (ψ = P·ê, no fine-tuning)" if feed_forward else f"{res.steps} fine-tuning steps"
        print(f"wrote {res.output_dir} (few-shot, T={res.frames}, {kind}): embedding {res.embed_seconds:.2f}s, "
              f"fine-tuning {res.finetune_seconds:.2f}s")
        if res.losses:
            print(f"content loss {res.losses[0]['loss_content']:.4f} -> {res.losses[-1]['loss_content']:.4f}")
        return 0

    candidates = load_start_candidates(args.base)
    person = collect_frames(args.video, args.images, size=candidates[0][0].config.image_size, max_frames=args.max_frames)
    opts = PersonalizeOptions(steps=args.steps, seconds=args.seconds if args.seconds is not None else (None if args.steps else 30.0),
                              adapter=args.adapter, rank=args.rank, max_frames=args.max_frames,
                              mouth=not args.no_mouth)
    bar = tqdm(total=opts.steps, unit="step", desc="personalize")

    def progress(step: int, loss: float, elapsed: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", s=f"{elapsed:.0f}")

    res = personalize(person, args.output, weights=args.base, options=opts, progress=progress, candidates=candidates)
    bar.close()
    print(f"wrote {res.output_dir} ({res.adapter}, {res.output_bytes / 1e6:.2f} MB) after {res.steps} steps in "
          f"{res.seconds:.1f}s on {res.num_frames} frames; loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f}")
    if res.validation:
        start, kept = res.validation[0][1], min(e for _, e in res.validation)
        print(f"held-back frames: L1 {start:.4f} at the start, {kept:.4f} with the saved weights (step {res.best_step})")
    if res.start_errors:
        print(start_summary(res))
    if res.mouth is not None:
        print(mouth_summary(res.mouth))
    return 0


def start_summary(res: PersonalizeResult) -> str:
    """One line on which start was chosen and why (CLI and app)."""
    names = {"meta": "meta-learned", "generator": "plain"}
    errs = ", ".join(f"{names.get(k, k)} {v:.4f}" for k, v in res.start_errors.items())
    return f"started from the {names.get(res.component, res.component)} weights (held-back L1 before any step: {errs})"


def mouth_summary(m: MouthPersonalization) -> str:
    """One line on the mouth network's personalization (CLI and app)."""
    head = f"mouth network: {m.steps} steps on {m.pairs} mouth pairs in {m.seconds:.1f}s; "
    if m.error_before is None:
        return head + "no held-back frame has an open mouth, so it is kept unvalidated"
    verdict = "kept" if m.kept else "not kept (the shipped network stays)"
    line = head + f"held-back open mouths: masked L1 {m.error_before:.4f} -> {m.error_after:.4f}, {verdict}"
    if m.fill_errors:
        policy = "every open mouth" if m.source_margin is None else "mouths opening beyond the photo's"
        line += (f"; it draws {policy} (mouth-crop L1 {m.fill_errors['every open mouth']:.4f} drawing every open "
                 f"mouth vs {m.fill_errors['beyond the source']:.4f} only beyond the photo's)")
    return line


if __name__ == "__main__":
    raise SystemExit(main())
