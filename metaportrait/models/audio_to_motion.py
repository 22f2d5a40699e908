"""Audio-to-motion: speech -> the lower face's landmark motion for one video frame.

The audio-driven talking heads that render through explicit facial motion (MakeItTalk, Zhou et
al., SIGGRAPH Asia 2020, §3.1: speech content -> landmark displacements added to the speaker's
static landmarks; Audio2Head / SadTalker predict motion coefficients the same way) split the task
in two: a small network predicts *motion* from the speech, a renderer draws it. Here the motion
is the displacement of the 478 MediaPipe landmarks from a closed, resting mouth, in a canonical
face frame (origin, scale and roll of the stable upper-face points, so the numbers mean the same
for every face), on a PCA basis of the mouth, jaw and cheek motion measured on talking clips; the
renderer is the landmark-driven generator of MetaPortrait (Zhang et al., CVPR 2023, §3.1).

Input: log-mel features (:meth:`AudioToMotion.log_mel`, dB relative to the recording's reference
level / 20) in a window of ``2·context_frames + 1`` 10 ms frames centred on the video frame's
time, and with ``num_visemes > 0`` below them the one-hot viseme class of each frame (phones
recognised by a pre-trained recogniser and grouped by their look, :mod:`metaportrait.visemes`).
Output: :class:`AudioMotionOutput`, the PCA coefficients and the displacement they give.
Pure tensors in and out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from metaportrait.models.hub import HubModel, ModelConfig


@dataclass(frozen=True)
class AudioToMotionConfig(ModelConfig):
    sample_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 400  # 25 ms Hann window
    hop_length: int = 160  # 10 ms
    n_mels: int = 64
    num_visemes: int = 0  # one-hot viseme classes per mel column beside the mels (0: mels only)
    f_min: float = 60.0
    f_max: float = 7600.0
    context_frames: int = 24  # mel frames each side of the video frame (±240 ms)
    hidden_channels: int = 96
    num_coefficients: int = 12  # PCA components of the lower-face motion
    num_points: int = 478
    dropout: float = 0.2
    # statistics of the life beyond the lips, measured on the training clips (speak.py samples them)
    head_std_deg: tuple[float, float, float] = (3.0, 2.0, 1.5)  # yaw, pitch, roll spread
    head_time_constant: float = 1.0  # seconds (correlation time of the head's wander)
    blink_rate: float = 0.3  # blinks per second
    blink_seconds: float = 0.25
    brow_std: float = 0.1  # brow raise spread on the raise_brows scale

    def validate(self) -> None:
        self.check_positive_ints("sample_rate", "n_fft", "win_length", "hop_length", "n_mels",
                                 "context_frames", "hidden_channels", "num_coefficients", "num_points")
        if self.win_length > self.n_fft:
            raise ValueError(f"AudioToMotionConfig.win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"AudioToMotionConfig: need 0 <= f_min < f_max <= sample_rate/2, got "
                             f"{self.f_min}, {self.f_max}")
        if self.num_visemes < 0:
            raise ValueError(f"AudioToMotionConfig.num_visemes must be >= 0, got {self.num_visemes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"AudioToMotionConfig.dropout must be in [0, 1), got {self.dropout}")
        if len(self.head_std_deg) != 3 or any(not 0 <= v <= 30 for v in self.head_std_deg):
            raise ValueError(f"AudioToMotionConfig.head_std_deg must be 3 values in [0, 30], got {self.head_std_deg}")
        for name in ("head_time_constant", "blink_seconds"):
            if not 0 < getattr(self, name) <= 10:
                raise ValueError(f"AudioToMotionConfig.{name} must be in (0, 10], got {getattr(self, name)}")
        if not 0 <= self.blink_rate <= 3 or not 0 <= self.brow_std <= 1:
            raise ValueError(f"AudioToMotionConfig: blink_rate in [0, 3] and brow_std in [0, 1], got "
                             f"{self.blink_rate}, {self.brow_std}")

    @property
    def window(self) -> int:
        return 2 * self.context_frames + 1

    @property
    def channels(self) -> int:
        """Input rows per window column: the mels, then the one-hot visemes."""
        return self.n_mels + self.num_visemes


@dataclass(frozen=True)
class AudioMotionOutput:
    coefficients: torch.Tensor  # B×K
    displacement: torch.Tensor  # B×N×2, canonical face units (RMS radius of the stable points = 1)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular mel filters (HTK mel scale, Slaney area normalisation), ``n_mels × (n_fft/2+1)``."""
    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(torch.tensor(f_min)), hz_to_mel(torch.tensor(f_max)), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))
    return fb.float()


class AudioToMotion(HubModel):
    """Log-mel window -> PCA coefficients of the lower-face landmark displacement."""

    config_class = AudioToMotionConfig

    def __init__(self, config: AudioToMotionConfig) -> None:
        super().__init__(config)
        c = self.config
        h = c.hidden_channels
        self.register_buffer("mel_basis", mel_filterbank(c.n_fft, c.n_mels, c.sample_rate, c.f_min, c.f_max),
                             persistent=False)
        self.register_buffer("hann", torch.hann_window(c.win_length), persistent=False)
        self.encoder = nn.Sequential(
            nn.Conv1d(c.channels, h, 3, padding=1), nn.GELU(),
            nn.Conv1d(h, h, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(h, h, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(h, h, 3, stride=2, padding=1), nn.GELU(),
        )
        length = c.window
        for _ in range(3):
            length = (length - 1) // 2 + 1
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(c.dropout), nn.Linear(h * length, 128), nn.GELU(), nn.Linear(128, c.num_coefficients),
        )
        # the motion basis (PCA of the training displacements): mean N×2 and components K×N×2
        self.register_buffer("mean", torch.zeros(c.num_points, 2))
        self.register_buffer("components", torch.zeros(c.num_coefficients, c.num_points, 2))

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``n_mels × T`` log-mel power (dB) of a 1-D wave; column ``j`` is centred on sample
        ``j·hop + n_fft/2`` of ``wave`` (no padding: the caller pads)."""
        c = self.config
        pad = (c.n_fft - c.win_length) // 2
        window = torch.nn.functional.pad(self.hann, (pad, c.n_fft - c.win_length - pad))
        spec = torch.stft(wave, c.n_fft, hop_length=c.hop_length, win_length=c.n_fft, window=window,
                          center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = self.mel_basis @ power
        return 10.0 * torch.log10(mel.clamp_min(1e-10))

    @staticmethod
    def normalise(mel_db: torch.Tensor, reference_db: float) -> torch.Tensor:
        """Features the network sees: the level relative to the recording's reference, /20, floored
        at −80 dB (a window-energy correction keeps full-scale sines near 0)."""
        return ((mel_db - reference_db + 10.0 * math.log10(128.0)) / 20.0).clamp_min(-4.0)

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Displacement ``B×N×2`` (canonical units) of PCA coefficients ``B×K``."""
        return self.mean + torch.einsum("bk,knd->bnd", coefficients, self.components)

    def forward(self, features: torch.Tensor) -> AudioMotionOutput:
        """``features``: ``B × (n_mels + num_visemes) × window``: normalised log-mel windows, then (when
        the config has visemes) the one-hot viseme class of each column."""
        c = self.config
        if features.ndim != 3 or features.shape[1] != c.channels or features.shape[2] != c.window:
            raise ValueError(f"features must be B×{c.channels}×{c.window}, got {tuple(features.shape)}")
        coefficients = self.head(self.encoder(features))
        return AudioMotionOutput(coefficients=coefficients, displacement=self.decode(coefficients))


__all__ = ["AudioMotionOutput", "AudioToMotion", "AudioToMotionConfig", "mel_filterbank"]
