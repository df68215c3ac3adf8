"""Decoding raw catalog values, with an EncoderInputError naming the value when it is unusable."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np

from .base import EncoderInputError

# Peak below -80 dBFS: nothing an encoder could hear, usually a muted or broken export.
SILENCE_PEAK = 1e-4


def _existing_file(value, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise EncoderInputError(f"{what} path must be a non-empty string, got {value!r}")
    path = os.fspath(value)
    if not os.path.isfile(path):
        raise EncoderInputError(f"{what} file not found: {path}")
    return path


def load_image(value):
    """An RGB PIL image, fully decoded now so a truncated file fails here, not in the model."""
    from PIL import Image

    path = _existing_file(value, "image")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise EncoderInputError(f"cannot decode image {path}: {exc}") from None


def check_text(value) -> str:
    if not isinstance(value, str):
        raise EncoderInputError(f"text must be a string, got {type(value).__name__}: {value!r:.80}")
    if not value.strip():
        raise EncoderInputError(f"text is empty or whitespace: {value!r:.80}")
    return value


def load_audio(value, rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 at `rate`, at most `max_seconds` long, from wav/flac/ogg/mp3 (libsndfile)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    path = _existing_file(value, "audio")
    try:
        with sf.SoundFile(path) as fh:
            src_rate = fh.samplerate
            # Only decode what is kept: a one-hour podcast costs the same as its first seconds.
            want = fh.frames if max_seconds is None else min(fh.frames, math.ceil(max_seconds * src_rate) + 1)
            data = fh.read(frames=max(want, 0), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for corrupt input
        raise EncoderInputError(f"cannot decode audio {path}: {str(exc).strip() or type(exc).__name__}") from None
    if data.shape[0] == 0:
        raise EncoderInputError(f"audio file has no samples (zero length): {path}")
    wave = data.mean(axis=1)
    if not np.isfinite(wave).all():
        raise EncoderInputError(f"audio has NaN/inf samples: {path}")
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        raise EncoderInputError(f"audio is silent (peak below {SILENCE_PEAK:g}) in the part encoded: {path}")
    if src_rate != rate:
        ratio = Fraction(rate, src_rate)
        wave = resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * rate))]
    return np.ascontiguousarray(wave, dtype=np.float32)
