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
    """Mono float32 at `rate`, at most `max_seconds` long, from wav/flac/ogg/mp3 (libsndfile).

    An MP3 whose last frame is cut off (an interrupted download or copy) is refused as
    truncated, like a truncated image: libsndfile would decode whatever frames are left without
    a word, and a 3 KB stub would pass for a 0.2 s song.
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    path = _existing_file(value, "audio")
    try:
        fh = sf.SoundFile(path)
    except Exception as exc:
        raise EncoderInputError(_unopenable(path, exc)) from None
    try:
        with fh:
            if fh.format == "MP3":
                cut = _mp3_cut_off(path)
                if cut:
                    raise EncoderInputError(f"audio file is truncated ({cut}): {path}")
            src_rate = fh.samplerate
            # Only decode what is kept: a one-hour podcast costs the same as its first seconds.
            want = fh.frames if max_seconds is None else min(fh.frames, math.ceil(max_seconds * src_rate) + 1)
            data = fh.read(frames=max(want, 0), dtype="float32", always_2d=True)
    except EncoderInputError:
        raise
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


def _unopenable(path: str, exc: Exception) -> str:
    if os.path.getsize(path) == 0:
        return f"audio file is empty (0 bytes): {path}"
    reason = getattr(exc, "error_string", None) or str(exc).strip() or type(exc).__name__
    # libsndfile says this whenever no decoder recognises the bytes; the file itself was found
    if reason.startswith("File does not exist"):
        reason = "no wav/flac/ogg/mp3 decoder recognises its content (corrupt, or another format)"
    return f"cannot decode audio {path}: {reason}"


# MPEG audio frame headers (ISO 11172-3, 13818-3): kbit/s by (MPEG-1?, layer) and bitrate index,
# sample rates by version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5).
_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_KBPS[(False, 3)] = _KBPS[(False, 2)]
_HZ = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
# The largest frame is under 3 KB, so this much of the tail holds several whole frames.
_TAIL = 16384


def _mpeg_frame(buf: bytes, i: int) -> tuple[int, tuple[int, int, int]] | None:
    """(frame length in bytes, stream kind) of a valid frame header at ``buf[i:]``, else None."""
    if i + 4 > len(buf) or buf[i] != 0xFF or buf[i + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (buf[i + 1] >> 3) & 3, 4 - ((buf[i + 1] >> 1) & 3)
    bitrate, rate_index, pad = buf[i + 2] >> 4, (buf[i + 2] >> 2) & 3, (buf[i + 2] >> 1) & 1
    if version == 1 or layer == 4 or bitrate in (0, 15) or rate_index == 3:
        return None  # reserved values, or free format (whose length no header gives)
    kbps, hz = _KBPS[(version == 3, layer)][bitrate], _HZ[version][rate_index]
    if layer == 1:
        size = (12000 * kbps // hz + pad) * 4
    else:
        size = (144000 if version == 3 or layer == 2 else 72000) * kbps // hz + pad
    return size, (version, layer, rate_index)


def _audio_end(f, size: int) -> int:
    """Where the MPEG frames end: before an ID3v1 tag and an APEv2 tag, when present."""
    end = size
    f.seek(max(0, end - 160))
    tail = f.read()
    if len(tail) >= 128 and tail[-128:-125] == b"TAG":
        end, tail = end - 128, tail[:-128]
    if len(tail) >= 32 and tail[-32:-24] == b"APETAGEX":
        tag_size = int.from_bytes(tail[-20:-16], "little")  # items + footer
        has_header = int.from_bytes(tail[-12:-8], "little") >> 31
        end -= tag_size + 32 * has_header
    return max(end, 0)


def _mp3_cut_off(path: str) -> str | None:
    """How an MP3 file is cut off inside its last frame, or None when its frames end cleanly.

    Reads only the file's tail and follows frame headers, each giving the next one's offset, from
    the first place where they chain. When no chain reaches the end of the audio (an unknown
    trailing tag, or junk) there is no verdict: a file is never refused on a guess. A file cut
    exactly between two frames is a valid, shorter MP3 and cannot be told from one.
    """
    with open(path, "rb") as f:
        end = _audio_end(f, os.fstat(f.fileno()).st_size)
        start = max(0, end - _TAIL)
        f.seek(start)
        buf = f.read(end - start)
    i = buf.find(b"\xff")
    while i >= 0:
        pos, frames, kind = i, 0, None
        while pos < len(buf):
            head = _mpeg_frame(buf, pos)
            if head is None and frames >= 2 and len(buf) - pos < 4 and buf[pos] == 0xFF:
                return f"it ends inside the header of its last MP3 frame, {len(buf) - pos} bytes in"
            if head is None or (kind is not None and head[1] != kind):
                break
            size, kind = head
            frames += 1
            if pos + size > len(buf):
                if frames >= 2:  # a lone header could be stray bytes; two chained ones are a stream
                    return f"its last MP3 frame has {len(buf) - pos} of its {size} bytes"
                break
            pos += size
        if pos == len(buf) and frames >= 2:
            return None
        i = buf.find(b"\xff", i + 1)
    return None
