"""The package's own exceptions: every user-facing failure is one of these, with a clear message."""

from __future__ import annotations


class MetaPortraitError(Exception):
    """Base class of every error this package raises on purpose."""


class NoFaceError(MetaPortraitError):
    """No face was found where one is required (a source photo, a driving frame, a training clip)."""


class InvalidImageError(MetaPortraitError):
    """The file is not a decodable image, or its mode/size cannot be handled."""


class InvalidVideoError(MetaPortraitError):
    """The file is not a decodable video, is truncated, or has no frames."""


class InvalidAudioError(MetaPortraitError):
    """The file is not decodable audio (or a video without an audio track), is empty or corrupt."""


class NoSpeechError(InvalidAudioError):
    """The audio decodes but holds no speech (silence or a near-silent hum)."""


class InputTooLargeError(MetaPortraitError):
    """An input exceeds a configured limit (pixels, duration, frame count, file size)."""


class WeightsError(MetaPortraitError):
    """Weights are missing, do not match the model's config, or cannot be fetched."""


class OutputPathError(MetaPortraitError):
    """An output path cannot be written: a directory, an unsupported suffix, a read-only folder."""


class CheckpointError(MetaPortraitError):
    """A training checkpoint folder is incomplete or does not match the model being trained."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint folder holds a file format that can run code when loaded (a pickle)."""


class MultipleFacesWarning(UserWarning):
    """Several faces were found; the largest one is used."""
