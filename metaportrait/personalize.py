"""The names personalization code has always imported from here, re-exported.

The personalization training loop lives with the rest of the training code, in
:mod:`metaportrait.training.personalize` (MetaPortrait's fast personalization) and
:mod:`metaportrait.training.fewshot_finetune` (the few-shot family); the inference pipelines only
load the adapters and folders they write. New code should import from those modules.
"""

from __future__ import annotations

from metaportrait.person import PersonFrames, collect_frames
from metaportrait.training.fewshot_finetune import FewShotPersonalization, personalize_fewshot
from metaportrait.training.personalize import (
    PersonalizeOptions,
    PersonalizeResult,
    PersonPairs,
    ProgressFn,
    heldout_errors,
    load_start_generator,
    main,
    personalize,
    render_preview,
    split_validation,
)

__all__ = [
    "FewShotPersonalization",
    "PersonFrames",
    "PersonPairs",
    "PersonalizeOptions",
    "PersonalizeResult",
    "ProgressFn",
    "collect_frames",
    "heldout_errors",
    "load_start_generator",
    "main",
    "personalize",
    "personalize_fewshot",
    "render_preview",
    "split_validation",
]
