"""Tiny randomly initialised checkpoints, saved the way real ones are published, for encoder tests.

Each builder writes a folder (or file) that the local-path spec loads through the same
code path as a downloaded checkpoint. Seeds are fixed so two builds are identical.
"""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import torch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + [
    "red", "hat", "blue", "scarf", "green", "sock", "black", "boot", "the", "a", "warm", "leather",
    "##s", "##ed", "##ing", ".", ","]

TINY_TRANSFORMER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def build_timm_vit(root: Path, seed: int = 0) -> Path:
    import timm
    from timm.models import save_for_hf

    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    save_for_hf(model, root, safe_serialization=True, model_args=args)
    return root


def _build_timm_cnn(root: Path, name: str, args: dict, size: int, seed: int) -> Path:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **args)
    data = dict(input_size=(3, size, size), crop_pct=1.0, interpolation="bilinear", crop_mode="center",
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    save_for_hf(model, root, safe_serialization=True, model_args=args, data_config=data)
    return root


def build_timm_convnext(root: Path, seed: int = 0) -> Path:
    return _build_timm_cnn(root, "convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 48, seed)


def build_timm_resnet(root: Path, seed: int = 0) -> Path:
    """A ResNet whose blocks are the layer1..layer4 attributes (not a ModuleList)."""
    return _build_timm_cnn(root, "resnet18", dict(layers=(1, 1, 1, 1), channels=(8, 16, 24, 32), stem_width=8),
                           32, seed)


def build_hf_vit(root: Path, seed: int = 0) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(**TINY_TRANSFORMER, image_size=32, patch_size=8)).save_pretrained(root)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    return root


def write_tokenizer(root: Path) -> None:
    from transformers import BertTokenizer

    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizer.from_pretrained(root, model_max_length=64).save_pretrained(root)


def build_hf_bert(root: Path, seed: int = 0) -> Path:
    from transformers import BertConfig, BertModel

    write_tokenizer(root)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), max_position_embeddings=64, **TINY_TRANSFORMER)
    BertModel(config).save_pretrained(root)
    return root


def build_hf_wav2vec2(root: Path, seed: int = 0, rate: int = 16000) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    config = Wav2Vec2Config(**TINY_TRANSFORMER, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="group")
    Wav2Vec2Model(config).save_pretrained(root)
    Wav2Vec2FeatureExtractor(sampling_rate=rate, do_normalize=True, return_attention_mask=False).save_pretrained(root)
    return root


def build_hf_hubert(root: Path, seed: int = 0) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    config = HubertConfig(**TINY_TRANSFORMER, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                          do_stable_layer_norm=True)
    HubertModel(config).save_pretrained(root)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(root)
    return root


def build_hf_ast(root: Path, seed: int = 0) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(seed)
    ASTModel(ASTConfig(**TINY_TRANSFORMER, num_mel_bins=32, max_length=64, patch_size=16)).save_pretrained(root)
    ASTFeatureExtractor(num_mel_bins=32, max_length=64).save_pretrained(root)
    return root


def build_hf_clap(root: Path, seed: int = 0) -> Path:
    """A CLAP with tiny text and HTSAT audio towers at 16 kHz with 1-second windows."""
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

    text = ClapTextConfig(vocab_size=100, max_position_embeddings=40, projection_dim=16, hidden_size=32,
                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    audio = ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=16, depths=[1, 1], num_attention_heads=[2, 2],
                            patch_embeds_hidden_size=16, hidden_size=32, patch_size=4, patch_stride=(4, 4),
                            projection_dim=16, enable_fusion=False)
    torch.manual_seed(seed)
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    ClapModel(config).save_pretrained(root)
    ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1, fft_window_size=1024,
                         frequency_max=8000, truncation="rand_trunc", padding="repeatpad").save_pretrained(root)
    return root


def build_hf_clip(root: Path, seed: int = 0) -> Path:
    """A dual-tower transformers CLIP (the BERT vocabulary stands in for CLIP's BPE)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    write_tokenizer(root)
    text = CLIPTextConfig(vocab_size=len(VOCAB), max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                          eos_token_id=3, **TINY_TRANSFORMER)  # pools at [SEP], the BERT vocab end token
    vision = CLIPVisionConfig(image_size=32, patch_size=8, **TINY_TRANSFORMER)
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    CLIPModel(config).save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return root


OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_open_clip(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A custom-architecture JSON and its weights as safetensors; also the hub folder layout."""
    import open_clip
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(OPEN_CLIP_CONFIG), encoding="utf-8")
    torch.manual_seed(seed)
    model = open_clip.CLIP(**OPEN_CLIP_CONFIG)
    weights = root / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    folder = root / "hub"
    folder.mkdir(exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_CONFIG, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return config, weights


def build_st(root: Path, bert_dir: Path) -> Path:
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer

    word = Transformer(str(bert_dir), max_seq_length=32)
    dim = word.get_embedding_dimension() if hasattr(word, "get_embedding_dimension") \
        else word.get_word_embedding_dimension()
    pooling = Pooling(dim, pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(root))
    return root


def write_wav(path: Path, seconds: float, rate: int = 22050, channels: int = 2, freq: float = 440.0,
              amplitude: float = 0.3) -> Path:
    """A 16-bit PCM tone (amplitude 0 writes digital silence)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    tone = amplitude * np.sin(2 * math.pi * freq * t)
    data = np.stack([tone * (1 - 0.3 * c) for c in range(channels)], axis=1)
    pcm = (np.clip(data, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(channels)
        fh.setsampwidth(2)
        fh.setframerate(rate)
        fh.writeframes(pcm.tobytes())
    return path


def write_image(path: Path, size=(40, 56), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


class ToyEncoder:
    """Built lazily so importing this module does not need the encoders package."""

    def __new__(cls, name: str, scale: float = 1.0):
        from encoders import Encoder

        from encoders.processing import PadCollate

        class _Toy(Encoder):
            def __init__(self):
                super().__init__(modality="text", dim=2, preprocessor=ToyText(), collator=PadCollate(),
                                 identity={"backend": "toy", "model": name, "scale": scale})
                self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

            def encode(self, batch):
                x = batch["chars"].float()
                return torch.stack([x[:, 0] * self.scale, torch.full_like(x[:, 0], 7.0) * self.scale], dim=1)

        return _Toy()


class ToyText:
    def __call__(self, value):
        return {"chars": torch.tensor([len(value)])}


def toy_factory(name, *, modality=None, offline=False, random_init=False, **options):
    return ToyEncoder(name, **options)
