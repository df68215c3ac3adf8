"""The derived-data cache (kNN / user-user graphs): keyed by what built it, verified on read."""

import numpy as np
import torch

from pipeline.models.derived import array_fingerprint, cached_tensors

from test_models import demo  # noqa: F401  (the fixture)
from zoo_checks import check_bad_features


def test_round_trip_key_and_damage(tmp_path):
    calls = []
    dense = torch.randn(5, 3)
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1, 4], [2, 0, 4]]), torch.tensor([1.0, 2.0, 3.0]), (5, 5))

    def build():
        calls.append(1)
        return {"d": dense, "s": sparse}

    first = cached_tensors(tmp_path, "test", {"k": 1}, build)
    again = cached_tensors(tmp_path, "test", {"k": 1}, build)
    assert len(calls) == 1
    for got in (first, again):
        assert torch.equal(got["d"], dense)
        assert got["s"].layout == torch.sparse_csr and got["s"].crow_indices().dtype == torch.int32
        assert torch.equal(got["s"].to_dense(), sparse.to_dense())
    cached_tensors(tmp_path, "test", {"k": 2}, build)  # another identity: built again, beside the first
    assert len(calls) == 2 and len(list((tmp_path / "derived").iterdir())) == 2
    (f,) = [
        p for p in (tmp_path / "derived").glob("test-*/tensors.safetensors")
        if '"k": 1' in (p.parent / "identity.json").read_text()]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the tensor data: safetensors would load it silently
    f.write_bytes(bytes(data))
    rebuilt = cached_tensors(tmp_path, "test", {"k": 1}, build)
    assert len(calls) == 3 and torch.equal(rebuilt["d"], dense)


def test_array_fingerprint_sees_values_dtype_and_shape():
    a = np.arange(6)
    assert array_fingerprint(a) == array_fingerprint(torch.arange(6))
    assert array_fingerprint(a) != array_fingerprint(a.astype(np.int32))
    assert array_fingerprint(a) != array_fingerprint(a.reshape(2, 3))
    assert array_fingerprint(a, a) != array_fingerprint(np.concatenate([a, a]).reshape(2, 6))


def test_feature_tables_of_the_wrong_shape_fail_before_training(demo):  # noqa: F811
    check_bad_features(demo, "freedom")
