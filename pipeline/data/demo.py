"""Deterministic synthetic multimodal recommendation data set.

``generate_demo`` writes a small catalogue (text, PNG images, WAV audio) plus a
user-item interaction log as ordinary files, so the package's loaders read it
exactly as they would read real data.  Nothing depends on the clock: the same
parameters give byte-identical files.

Taste model
-----------
Every item has five hidden attributes spread over the modalities: ``shape``,
``colour`` and ``texture`` are drawn into the image, ``pitch`` and ``rhythm``
are audible in the clip, and the title/description mention them through
synonyms (``crimson``/``scarlet`` for red), sometimes leaving a few out, so no
single modality is a lookup table for the attributes.

Every user has a favourite level of each attribute and a personal pickiness
``s_u``.  The affinity of user ``u`` for item ``i`` is::

    a(u, i) = s_u * sum_k (beta_k * [attr_k(i) == fav_k(u)] + noise_uk[attr_k(i)])

with colour weighted most, then shape, pitch, texture and rhythm.  Item
popularity is lognormal (a long tail).  A user's items are drawn without
replacement with probability proportional to::

    exp(a(u, i)) * popularity_i ** ALPHA * exposure(u, i)

where ``exposure`` is the share of the user's active period in which the item
was already released (zero if it came out after the user left).  About half of
a user's items have the favourite colour against a base rate of one in six.
Item release dates span a one-year window (plus a small back catalogue), with
roughly 17% released in the window's last fifth, so a global temporal split
leaves items that only a content-aware model can score.
"""

from __future__ import annotations

import json
import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..atomic import atomic_directory

DEMO_VERSION = 1  # bump when the output for the same parameters changes

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = {  # base RGB, jittered per item
    "red": (210, 40, 40), "orange": (240, 140, 30), "yellow": (235, 215, 40),
    "green": (50, 170, 70), "blue": (40, 90, 210), "purple": (140, 60, 180),
}
TEXTURES = ("solid", "stripes", "dots", "checker")
PITCHES = ("low", "mid", "high")
RHYTHMS = ("steady", "pulsed", "fast")
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES,
              "pitch": PITCHES, "rhythm": RHYTHMS}

# Words are unique across levels so tests and diagnostics can map text back.
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet", "ruby"),
    "orange": ("orange", "tangerine", "apricot", "amber"),
    "yellow": ("yellow", "golden", "lemon", "canary"),
    "green": ("green", "emerald", "jade", "olive"),
    "blue": ("blue", "azure", "cobalt", "sapphire"),
    "purple": ("purple", "violet", "lilac", "plum"),
}
SHAPE_WORDS = {
    "circle": ("circle", "disc", "round"), "square": ("square", "block", "boxy"),
    "triangle": ("triangle", "three-cornered", "wedge"),
    "star": ("star", "five-pointed", "starry"), "diamond": ("diamond", "rhombus", "lozenge"),
}
TEXTURE_WORDS = {
    "solid": ("plain", "solid", "single-tone"), "stripes": ("striped", "banded", "pinstriped"),
    "dots": ("dotted", "polka-dot", "speckled"), "checker": ("checkered", "chequered", "checkerboard"),
}
PITCH_WORDS = {
    "low": ("hums a deep bass note", "rumbles low", "drones in a low register"),
    "mid": ("sings a mid-range tone", "plays a warm middle note", "sounds a mellow tone"),
    "high": ("chimes a high note", "whistles brightly", "rings at a high pitch"),
}
RHYTHM_WORDS = {
    "steady": ("steadily", "in one continuous tone", "without a pause"),
    "pulsed": ("in slow pulses", "with a gentle beat", "in unhurried throbs"),
    "fast": ("in rapid bursts", "with a quick flutter", "in fast staccato pulses"),
}
_NOUNS = ("charm", "badge", "token", "tile", "sticker", "pin", "emblem")
_FILLERS = (
    "Great as a small gift.", "Part of a limited batch.", "Made from recycled materials.",
    "Fans say it brightens any shelf.", "Ships in a paper sleeve.", "A customer favourite.",
    "Fits easily in a pocket.", "Designed by an independent studio.", "",
)

# Affinity weights: strong enough that content predicts taste, weak enough that
# popularity and noise still matter (roughly 50% favourite-colour share).
_BETA = {"shape": 1.0, "colour": 2.2, "texture": 0.6, "pitch": 0.8, "rhythm": 0.5}
_PREF_NOISE = 0.35
ALPHA = 1.0  # popularity exponent
_POP_SIGMA = 1.0
_WINDOW_START = 1672531200  # 2023-01-01T00:00:00Z, fixed so output never depends on "now"
_WINDOW_DAYS = 365
_BACK_CATALOGUE = 0.15  # share of items released in the year before the window
_PITCH_HZ = {"low": 160.0, "mid": 420.0, "high": 1050.0}
_RHYTHM_HZ = {"steady": 0.0, "pulsed": 2.0, "fast": 8.0}


def _check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo \
            or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def _check_num(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _ids(prefix, n):
    width = max(5, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _sample_items(rng, n):
    attrs = {k: rng.integers(len(v), size=n) for k, v in ATTRIBUTES.items()}
    pop = rng.lognormal(0.0, _POP_SIGMA, size=n)
    back = rng.random(n) < _BACK_CATALOGUE
    day = np.where(back, -rng.integers(1, 366, size=n), rng.integers(0, _WINDOW_DAYS, size=n))
    return attrs, pop, day


@dataclass(frozen=True)
class Taste:
    """The generator's hidden reasons for every (user, item) pair, ``[n_users, n_items]`` each:
    a user draws items with log-weight ``affinity + ALPHA * log_popularity + log_exposure``."""

    affinity: np.ndarray      # s_u * sum_k (beta_k [favourite] + noise): what content can reveal
    log_popularity: np.ndarray  # [n_items] log of the lognormal popularity
    log_exposure: np.ndarray  # log share of the user's active period after the item's release (-inf: never)
    offered: np.ndarray       # [n_users, n_items] Unix time the item was first on offer to the user
    span: np.ndarray          # [n_users, n_items] seconds it stayed on offer

    @property
    def log_weight(self) -> np.ndarray:
        return self.affinity + ALPHA * self.log_popularity[None, :] + self.log_exposure


def draw_taste(rng, attrs, pop, release_s, n_users) -> Taste:
    """Users' activity periods and tastes, drawn from ``rng`` in the generator's order."""
    n_items = len(pop)
    window = _WINDOW_DAYS * 86400
    start = (rng.random(n_users) * 0.6 * window).astype(np.int64)
    end = np.minimum(window, start + (rng.uniform(0.4, 1.0, n_users) * window).astype(np.int64))
    strength = rng.uniform(0.6, 1.4, n_users)
    affinity = np.zeros((n_users, n_items))
    for k, levels in ATTRIBUTES.items():
        pref = rng.normal(0.0, _PREF_NOISE, (n_users, len(levels)))
        pref[np.arange(n_users), rng.integers(len(levels), size=n_users)] += _BETA[k]
        affinity += pref[:, attrs[k]]
    affinity *= strength[:, None]

    rel = release_s - _WINDOW_START  # relative seconds, may be negative
    lo = np.maximum(start[:, None], rel[None, :])
    span = end[:, None] - lo
    with np.errstate(divide="ignore"):
        exposure = np.log(np.clip(span, 0, None) / (end - start)[:, None])
    return Taste(affinity, np.log(pop), exposure, _WINDOW_START + lo, span)


def _sample_interactions(rng, attrs, pop, release_s, n_users, mean_interactions):
    taste = draw_taste(rng, attrs, pop, release_s, n_users)
    affinity, logw = taste.affinity, taste.log_weight
    # Gumbel top-k == sampling without replacement proportional to exp(logw).
    keys = logw + rng.gumbel(size=logw.shape)
    order = np.argsort(-keys, axis=1, kind="stable")
    sigma = 0.6
    n_per = np.rint(rng.lognormal(np.log(mean_interactions) - sigma**2 / 2, sigma, n_users))
    n_per = np.minimum(np.maximum(n_per, 3).astype(np.int64), np.isfinite(logw).sum(axis=1))

    users = np.repeat(np.arange(n_users), n_per)
    items = order[users, np.concatenate([np.arange(k) for k in n_per])]
    u_lo, u_span = taste.offered[users, items], taste.span[users, items]
    ts = u_lo + np.floor(rng.random(len(users)) * u_span).astype(np.int64)
    aff = affinity[users, items]
    z = (aff - aff.mean()) / (aff.std() + 1e-9)
    rating = np.clip(np.rint(3.6 + 0.9 * z + rng.normal(0, 0.7, len(users))), 1, 5).astype(int)
    idx = np.lexsort((items, ts, users))
    return users[idx], items[idx], ts[idx], rating[idx]


def _text(rng, a):
    def pick(words):
        return words[rng.integers(len(words))]

    colour, shape, texture = a["colour"], a["shape"], a["texture"]
    noun = pick(_NOUNS)
    tex_title = pick(TEXTURE_WORDS[texture]) + " " if rng.random() < 0.8 else ""
    title = f"{tex_title}{pick(COLOUR_WORDS[colour])} {pick(SHAPE_WORDS[shape])} {noun}"
    title = title[0].upper() + title[1:]
    # Each attribute is occasionally left out so the text is informative, not exhaustive.
    tex = pick(TEXTURE_WORDS[texture]) + " " if rng.random() < 0.85 else ""
    col = pick(COLOUR_WORDS[colour]) + " " if rng.random() < 0.9 else ""
    pitch = pick(PITCH_WORDS[a["pitch"]]) if rng.random() < 0.85 else None
    rhythm = pick(RHYTHM_WORDS[a["rhythm"]]) if rng.random() < 0.85 else None
    body = f"{tex}{col}{pick(SHAPE_WORDS[shape])} {noun}"
    body = ("An " if body[0] in "aeiou" else "A ") + body
    if pitch or rhythm:
        body += " that " + " ".join(filter(None, (pitch or "sounds", rhythm)))
    desc = (body + ". " + pick(_FILLERS)).strip()
    return title, desc


def _draw_image(rng, a, size, grid):
    yy, xx = grid
    r = size * rng.uniform(0.28, 0.40)
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    rot = rng.uniform(-0.3, 0.3)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)

    def poly(radii, offset):
        n = len(radii)
        ang = offset + rot + 2 * np.pi * np.arange(n) / n
        return [(cx + rr * np.cos(t), cy + rr * np.sin(t)) for rr, t in zip(radii, ang)]

    shape = a["shape"]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        draw.polygon(poly([r] * 4, np.pi / 4), fill=255)
    elif shape == "triangle":
        draw.polygon(poly([r] * 3, -np.pi / 2), fill=255)
    elif shape == "star":
        draw.polygon(poly([r, 0.45 * r] * 5, -np.pi / 2), fill=255)
    else:  # diamond: a rhombus taller than wide
        draw.polygon([(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)], fill=255)
    inside = np.asarray(mask) > 0

    period = size / rng.uniform(6, 10)
    texture = a["texture"]
    if texture == "stripes":
        th = rng.uniform(0, np.pi)
        light = ((xx * np.cos(th) + yy * np.sin(th)) / period) % 1.0 < 0.5
    elif texture == "dots":
        light = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) > (0.3 * period) ** 2
    elif texture == "checker":
        light = ((xx // period + yy // period) % 2) == 0
    else:
        light = np.ones_like(inside)

    colour = np.clip(np.array(COLOURS[a["colour"]]) + rng.normal(0, 12, 3), 0, 255)
    bg = rng.uniform(185, 235) + rng.normal(0, 6, 3)
    img = np.empty((size, size, 3))
    img[:] = bg
    img[inside] = np.where(light[inside, None], colour, colour * 0.55)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def _audio(rng, a, n, sr):
    t = np.arange(n) / sr
    f = _PITCH_HZ[a["pitch"]] * math.exp(rng.normal(0, 0.04))
    wav = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    if 2 * f < sr / 2:  # a harmonic for timbre, skipped where it would alias
        wav += 0.3 * np.sin(4 * np.pi * f * t)
    rate = _RHYTHM_HZ[a["rhythm"]] * math.exp(rng.normal(0, 0.05))
    if rate:
        wav *= 0.15 + 0.85 * 0.5 * (1 + np.tanh(6 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.28))))
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / max(1, 0.005 * sr))
    wav = wav * fade * rng.uniform(0.35, 0.5) + rng.normal(0, 0.01, n)
    return np.clip(np.rint(wav * 32767), -32768, 32767).astype("<i2").tobytes()


def _streams(seed):
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]


def _catalogue(rng, n_items):
    attrs, pop, day = _sample_items(rng, n_items)
    return attrs, pop, _WINDOW_START + day.astype(np.int64) * 86400


def demo_truth(*, n_items=1000, n_users=800, seed=0) -> tuple[list[str], list[str], Taste]:
    """What the demo with these parameters was drawn from: ``(item_ids, user_ids, taste)``, rows
    and columns of ``taste`` in the order of the ids. For measuring how far a model is from the
    ranking the generator itself implies; no model may read it."""
    streams = _streams(_check_int("seed", seed, 0))
    attrs, pop, release_s = _catalogue(streams[0], _check_int("n_items", n_items, 10))
    taste = draw_taste(streams[1], attrs, pop, release_s, _check_int("n_users", n_users, 1))
    return _ids("i", n_items), _ids("u", n_users), taste


def _write(tmp, params, progress):
    n_items, n_users = params["n_items"], params["n_users"]
    streams = _streams(params["seed"])
    attrs, pop, release_s = _catalogue(streams[0], n_items)
    u, i, ts, rating = _sample_interactions(streams[1], attrs, pop, release_s, n_users,
                                            params["mean_interactions"])
    item_ids, user_ids = np.array(_ids("i", n_items)), np.array(_ids("u", n_users))
    named = [{k: ATTRIBUTES[k][attrs[k][j]] for k in ATTRIBUTES} for j in range(n_items)]

    (tmp / "images").mkdir()
    (tmp / "audio").mkdir()
    size, sr = params["image_size"], params["sample_rate"]
    n_samples = max(1, round(params["audio_seconds"] * sr))
    grid = np.mgrid[0:size, 0:size].astype(float)
    texts = []
    it = range(n_items)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="demo items", unit="item")
    for j in it:
        texts.append(_text(streams[2], named[j]))
        _draw_image(streams[3], named[j], size, grid).save(tmp / "images" / f"{item_ids[j]}.png", "PNG")
        with wave.open(str(tmp / "audio" / f"{item_ids[j]}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(_audio(streams[4], named[j], n_samples, sr))

    released = pd.to_datetime(release_s, unit="s").strftime("%Y-%m-%d")
    csv = dict(index=False, lineterminator="\n")
    pd.DataFrame({
        "item_id": item_ids, "title": [t for t, _ in texts], "description": [d for _, d in texts],
        "image": [f"images/{x}.png" for x in item_ids], "audio": [f"audio/{x}.wav" for x in item_ids],
        "released": released,
    }).to_csv(tmp / "items.csv", **csv)
    pd.DataFrame({"user_id": user_ids[u], "item_id": item_ids[i], "timestamp": ts,
                  "rating": rating}).to_csv(tmp / "interactions.csv", **csv)
    attr_df = pd.DataFrame({"item_id": item_ids, **{k: [n[k] for n in named] for k in ATTRIBUTES}})
    attr_df["popularity"] = pop
    attr_df.to_csv(tmp / "attributes.csv", float_format="%.6f", **csv)
    meta = {**params, "interactions": int(len(u))}
    (tmp / "demo.json").write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    return meta


def _existing(out_dir, params):
    """The stored metadata if ``out_dir`` already holds this exact demo, else None."""
    try:
        meta = json.loads((out_dir / "demo.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and all(meta.get(k) == v for k, v in params.items())
    return meta if ok else None


def generate_demo(out_dir, *, n_items=1000, n_users=800, seed=0, image_size=64,
                  audio_seconds=1.0, sample_rate=16000, mean_interactions=20, progress=False) -> dict:
    """Write the demo data set into ``out_dir`` (atomically) and describe it.

    Returns ``{"path", "items", "users", "interactions", "generated"}``;
    ``generated`` is False when ``out_dir`` already held the same demo.
    """
    params = {
        "demo_version": DEMO_VERSION,
        "n_items": _check_int("n_items", n_items, 10),
        "n_users": _check_int("n_users", n_users, 1),
        "seed": _check_int("seed", seed, 0),
        "image_size": _check_int("image_size", image_size, 16, 4096),
        "audio_seconds": _check_num("audio_seconds", audio_seconds, 0.05, 600),
        "sample_rate": _check_int("sample_rate", sample_rate, 4000, 192000),
        "mean_interactions": _check_num("mean_interactions", mean_interactions, 1, 1e6),
    }
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be a bool, got {progress!r}")
    out_dir = Path(out_dir)

    def result(meta, generated):
        return {"path": str(out_dir), "items": params["n_items"], "users": params["n_users"],
                "interactions": int(meta["interactions"]), "generated": generated}

    if (meta := _existing(out_dir, params)) is not None:
        return result(meta, False)
    # an existing directory without demo.json is not ours: atomic_directory refuses to touch it
    with atomic_directory(out_dir, "demo.json") as tmp:
        meta = _write(tmp, params, progress)
    return result(meta, True)
