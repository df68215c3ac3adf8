"""Storage dtypes and conversions. numpy has no bfloat16, so bf16 rows are kept as their uint16
bit patterns (the upper half of the float32 bits), rounded to nearest-even like torch."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

STORAGE_DTYPES = ("float32", "float16", "bfloat16")
TENSOR_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # safetensors codes
NUMPY_DTYPE = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round finite float32 values to bfloat16 (nearest, ties to even); returns uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # no overflow into bit 32: NaN/inf are rejected before, and the largest finite value rounds to inf's bits
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float rows to the storage dtype (float64 goes through float32 first for bf16)."""
    if dtype == "bfloat16":
        return float32_to_bf16_bits(values.astype(np.float32, copy=False))
    with np.errstate(over="ignore"):  # overflow is reported by the caller, naming the key
        return values.astype(NUMPY_DTYPE[dtype], copy=False)


def to_float32(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows as float32 (exact: float32 holds every float16 and bfloat16 value)."""
    if dtype == "bfloat16":
        return bf16_bits_to_float32(stored)
    return np.asarray(stored, dtype=np.float32)


def as_torch(stored: np.ndarray, dtype: str):
    """A torch tensor sharing memory with stored rows, in their real dtype (bf16 included).

    Arrays from ``FeatureSet.read`` are copy-on-write memory maps, so the tensor is writable
    without touching the file and without a copy until written.
    """
    import torch

    arr = np.asarray(stored)
    if dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    if dtype not in NUMPY_DTYPE:
        raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {STORAGE_DTYPES}")
    return torch.from_numpy(arr)


def as_numpy(vectors) -> np.ndarray:
    """numpy rows from numpy, lists or torch tensors (bf16/fp16 tensors widen to float32, exactly)."""
    if type(vectors).__module__.startswith("torch"):
        t = vectors.detach().cpu()
        vectors = (t.float() if t.is_floating_point() and t.itemsize < 4 else t).numpy()
    vectors = np.asarray(vectors)
    if vectors.dtype.kind in "iu":  # plain lists of whole numbers
        vectors = vectors.astype(np.float64)
    return vectors


def checked_storage(vectors: np.ndarray, keys: list[str], dtype: str, label: str) -> np.ndarray:
    """Rows cast to the storage dtype; DataError naming the keys of rows with NaN/inf, or with
    values beyond the range of float16/bfloat16 (which the cast would turn into inf)."""
    _refuse(np.isfinite(vectors).all(axis=1), keys, label, "")
    stored = to_storage(vectors, dtype)
    if dtype == "float16":
        _refuse(np.isfinite(stored).all(axis=1), keys, label, " after casting to float16 (out of range)")
    elif dtype == "bfloat16":  # exponent bits all ones: inf
        ok = ((stored & np.uint16(0x7F80)) != np.uint16(0x7F80)).all(axis=1)
        _refuse(ok, keys, label, " after casting to bfloat16 (out of range)")
    return stored


def _refuse(row_ok: np.ndarray, keys: list[str], label: str, how: str) -> None:
    if row_ok.all():
        return
    bad = np.nonzero(~row_ok)[0]
    shown = ", ".join(repr(keys[i]) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise DataError(f"{label}: NaN or inf in the vector of key(s) {shown}{how}; "
                    f"record bad inputs with write_failed instead")
