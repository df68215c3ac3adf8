"""Picklable `preprocess` and `collate` callables.

They run in DataLoader worker processes, so each holds only a tokenizer, an image
transform or a feature extractor (all picklable), never a model or a closure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .media import check_text, load_audio, load_image


class TorchvisionImage:
    """timm / open_clip: a torchvision transform from the model's own pretrained config."""

    def __init__(self, transform, key: str = "pixel_values"):
        self.transform = transform
        self.key = key

    def __call__(self, value) -> dict[str, torch.Tensor]:
        return {self.key: self.transform(load_image(value))}


class HFImage:
    """transformers: the checkpoint's AutoImageProcessor."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, value) -> dict[str, torch.Tensor]:
        return self.from_image(load_image(value))

    def from_image(self, image) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.processor(images=image, return_tensors="pt")["pixel_values"][0]}


class HFText:
    """transformers / sentence-transformers tokenizer; truncates, pads later in `PadCollate`."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def __call__(self, value) -> dict[str, torch.Tensor]:
        out = self.tokenizer(check_text(value), truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v[0] for k, v in out.items() if torch.is_tensor(v)}


class OpenClipText:
    """open_clip tokenizers already pad/truncate to the tower's context length."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, value) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer([check_text(value)])[0]}


class HFAudio:
    """Decode, mono, resample, crop, then the checkpoint's feature extractor.

    Raw-waveform extractors (wav2vec2, HuBERT, WavLM) pad every clip to exactly
    `max_seconds`: group-norm models see padding, so a fixed length is what keeps an
    item's vector independent of the batch it lands in (the feature store relies on it).
    """

    def __init__(self, extractor, rate: int, max_seconds: float, waveform: bool):
        self.extractor = extractor
        self.rate = int(rate)
        self.max_seconds = float(max_seconds)
        self.waveform = waveform

    def __call__(self, value) -> dict[str, torch.Tensor]:
        return self.from_wave(load_audio(value, self.rate, self.max_seconds))

    def from_wave(self, wave: np.ndarray) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"sampling_rate": self.rate, "return_tensors": "pt"}
        if self.waveform:
            kwargs.update(padding="max_length", max_length=int(round(self.max_seconds * self.rate)),
                          truncation=True, return_attention_mask=True)
        out = self.extractor(wave, **kwargs)
        return {k: torch.as_tensor(v)[0] for k, v in out.items() if isinstance(v, (torch.Tensor, np.ndarray))}


class PadCollate:
    """Stack samples; variable-length keys are right-padded with their own pad value."""

    def __init__(self, pad_values: dict[str, float] | None = None, default_pad: float = 0):
        self.pad_values = dict(pad_values or {})
        self.default_pad = default_pad

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("collate needs at least one sample")
        batch = {}
        for key in samples[0]:
            items = [s[key] for s in samples]
            shape = [max(t.shape[d] for t in items) for d in range(items[0].dim())]
            if all(list(t.shape) == shape for t in items):
                batch[key] = torch.stack(items)
                continue
            out = items[0].new_full((len(items), *shape), self.pad_values.get(key, self.default_pad))
            for i, t in enumerate(items):
                out[(i, *[slice(0, n) for n in t.shape])] = t
            batch[key] = out
        return batch
