"""Train / valid / test split protocols over distinct (user, item) pairs.

A protocol is a class registered under the name ``data.split.protocol`` takes; its fields are
its own parameters (flat keys of ``data.split``, validated by the class, as Cornac's split
classes own theirs) and ``assign`` returns an ``int8`` array, one entry per pair: 0 train,
1 valid, 2 test (MMRec's ``x_label`` convention)::

    @register_split("last_day")
    class LastDay(SplitProtocol):
        needs_timestamps = True
        days: int = Field(1, ge=1)                      # data.split.days

        def assign(self, pairs, rng):
            cut = pairs.timestamp.max() - self.days * 86400
            return np.where(pairs.timestamp > cut, TEST, TRAIN).astype(np.int8)

All randomness comes from the one ``numpy.random.Generator`` seeded by ``data.split.seed``, so a
split is reproducible from its config alone. Everything is vectorised over pairs (no per-user
Python loops).

Per-user protocols share MMRec's rule for short histories: a user with at least
``short_history`` pairs gets ``int(n * (valid + test))`` evaluation pairs, split between valid
and test in proportion (valid rounded down); a user with 3 to ``short_history - 1`` pairs gets
exactly one valid and one test pair; a user with fewer than 3 pairs keeps them all in train.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, ClassVar

import numpy as np
from pydantic import AfterValidator, Field, model_validator

from ..errors import DataError
from ..registry import Registry
from ..section import Section

if TYPE_CHECKING:
    from ..data_config import SplitConfig
    from .interactions import Pairs

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")


class SplitProtocol(Section):
    """One registered split protocol: its parameters as fields, the split as ``assign``."""

    name: ClassVar[str] = ""  # set by register_split
    needs_timestamps: ClassVar[bool] = False

    @abstractmethod
    def assign(self, pairs: Pairs, rng: np.random.Generator) -> np.ndarray:
        """``int8`` per pair: ``TRAIN``, ``VALID`` or ``TEST``."""


SPLITS: Registry[type[SplitProtocol]] = Registry("split protocol")


def register_split(name: str) -> Callable[[type[SplitProtocol]], type[SplitProtocol]]:
    """Class decorator: register a ``SplitProtocol`` subclass as ``data.split.protocol=<name>``."""
    add = SPLITS.register(name)

    def deco(cls: type[SplitProtocol]) -> type[SplitProtocol]:
        if not (isinstance(cls, type) and issubclass(cls, SplitProtocol)):
            raise TypeError(f"register_split({name!r}) decorates a SplitProtocol subclass, got {cls!r}")
        cls.name = name
        return add(cls)

    return deco


def _ratios(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {list(v)}")
    return v


Ratios = Annotated[tuple[float, float, float], AfterValidator(_ratios)]  # train, valid, test


def _rank_within_user(users: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each pair inside its user when ordered by ``key``, and the user's pair count."""
    order = np.lexsort((key, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank_sorted = np.arange(len(users)) - np.repeat(starts, counts)
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = rank_sorted
    n = np.empty(len(users), dtype=np.int64)
    n[order] = np.repeat(counts, counts)
    return rank, n


def _eval_counts(n: np.ndarray, ratios: tuple[float, float, float], short_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair (by its user's count ``n``): how many of the user's pairs go to valid and test."""
    _, r_valid, r_test = ratios
    r_eval = r_valid + r_test
    n_eval = np.floor(n * r_eval + 1e-9).astype(np.int64)
    n_valid = np.floor(n_eval * (r_valid / r_eval if r_eval else 0) + 1e-9).astype(np.int64)
    n_test = n_eval - n_valid
    short = (n >= 3) & (n < short_history)
    n_valid = np.where(short, 1 if r_valid else 0, n_valid)
    n_test = np.where(short, 1 if r_test else 0, n_test)
    tiny = n < 3
    return np.where(tiny, 0, n_valid), np.where(tiny, 0, n_test)


def _by_rank(rank: np.ndarray, n: np.ndarray, n_valid: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    """The user's last ``n_test`` pairs (by rank) to test, the ``n_valid`` before them to valid."""
    out = np.full(len(rank), TRAIN, dtype=np.int8)
    out[rank >= n - n_test - n_valid] = VALID
    out[rank >= n - n_test] = TEST
    return out


def _day_start(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp())


@register_split("label")
class Label(SplitProtocol):
    """MMRec's ``x_label`` column as given (0 train, 1 valid, 2 test)."""

    def assign(self, pairs, rng):
        if pairs.label is None:
            raise DataError("data.split.protocol=label needs data.interactions.label (e.g. MMRec's x_label)")
        return pairs.label.astype(np.int8)


class PerUser(SplitProtocol):
    """The parameters and the cut of per-user protocols (not itself registered)."""

    ratios: Ratios = (0.8, 0.1, 0.1)
    short_history: int = Field(10, ge=3)  # MMRec: below this, one valid + one test item per user

    def per_user(self, pairs: Pairs, rng: np.random.Generator, by_time: bool) -> np.ndarray:
        """Random (``by_time=False``) or temporal per-user split with MMRec's short-history rule."""
        tiebreak = rng.permutation(len(pairs))
        if by_time:
            # time first, a random tie-break among equal timestamps (daily dates tie a lot)
            order = np.lexsort((tiebreak, pairs.timestamp))
            key = np.empty(len(pairs), dtype=np.int64)
            key[order] = np.arange(len(pairs))
        else:
            key = tiebreak
        rank, n = _rank_within_user(pairs.user, key)
        n_valid, n_test = _eval_counts(n, self.ratios, self.short_history)
        return _by_rank(rank, n, n_valid, n_test)


@register_split("random")
class RandomPerUser(PerUser):
    """Per user, at random, by ``ratios``."""

    def assign(self, pairs, rng):
        return self.per_user(pairs, rng, by_time=False)


@register_split("temporal_user")
class TemporalPerUser(PerUser):
    """Per user, each user's latest pairs to valid and test, by ``ratios``."""

    needs_timestamps = True

    def assign(self, pairs, rng):
        return self.per_user(pairs, rng, by_time=True)


@register_split("temporal_global")
class TemporalGlobal(SplitProtocol):
    """One cut in time for everyone: by ``valid_start``/``test_start`` dates, else by ratios."""

    needs_timestamps = True
    ratios: Ratios = (0.8, 0.1, 0.1)
    valid_start: dt.date | None = None  # first day of validation
    test_start: dt.date | None = None  # first day of test

    @model_validator(mode="after")
    def _dates(self) -> "TemporalGlobal":
        if (self.valid_start is None) != (self.test_start is None):
            raise ValueError("set both valid_start and test_start, or neither (then cut by ratios)")
        if self.valid_start is not None and self.valid_start > self.test_start:
            raise ValueError(f"valid_start {self.valid_start} is after test_start {self.test_start}")
        return self

    def assign(self, pairs, rng):
        ts = pairs.timestamp
        if self.valid_start is not None:
            valid_from, test_from = _day_start(self.valid_start), _day_start(self.test_start)
        else:
            r_train, r_valid, _ = self.ratios
            sorted_ts = np.sort(ts)
            valid_from = sorted_ts[min(int(len(ts) * r_train), len(ts) - 1)]
            test_from = sorted_ts[min(int(len(ts) * (r_train + r_valid)), len(ts) - 1)]
        out = np.full(len(ts), TRAIN, dtype=np.int8)
        out[ts >= valid_from] = VALID
        out[ts >= test_from] = TEST
        return out


@register_split("leave_one_out")
class LeaveOneOut(SplitProtocol):
    """Last pair per user (by time, else file order) to test, the one before to valid.

    Users with fewer than 3 pairs keep all of them in train.
    """

    def assign(self, pairs, rng):
        key = pairs.order if pairs.timestamp is None else np.lexsort((pairs.order, pairs.timestamp)).argsort()
        rank, n = _rank_within_user(pairs.user, key)
        ones = (n >= 3).astype(np.int64)
        return _by_rank(rank, n, ones, ones)


@register_split("cold_start")
class ColdStart(PerUser):
    """Hold out a fraction of the items entirely: half appear only in valid, half only in test.

    The other items' pairs are split per user at random, so valid and test hold both warm and
    cold items and the evaluator can report each slice.
    """

    cold_items: float = Field(0.2, gt=0, lt=1)  # fraction of items held out

    def assign(self, pairs, rng):
        items = np.unique(pairs.item)
        shuffled = rng.permutation(items)
        n_cold = max(2, int(round(len(items) * self.cold_items)))
        if n_cold >= len(items):
            raise DataError(f"data.split.cold_items={self.cold_items} holds out all {len(items)} items")
        valid_items, test_items = shuffled[: n_cold // 2], shuffled[n_cold // 2 : n_cold]
        out = self.per_user(pairs, rng, by_time=False)
        out[np.isin(pairs.item, valid_items)] = VALID
        out[np.isin(pairs.item, test_items)] = TEST
        return out


def split_pairs(pairs: Pairs, cfg: SplitConfig) -> np.ndarray:
    """Assign every pair to train / valid / test by ``data.split`` (its protocol and seed)."""
    protocol = cfg.params
    if protocol.needs_timestamps and pairs.timestamp is None:
        raise DataError(
            f"data.split.protocol={cfg.protocol} needs timestamps: set data.interactions.timestamp to a column"
        )
    out = protocol.assign(pairs, np.random.default_rng(cfg.seed))
    sizes = np.bincount(out, minlength=3)
    empty = [SPLIT_NAMES[i] for i in range(3) if sizes[i] == 0]
    if empty:
        raise DataError(
            f"data.split (protocol={cfg.protocol}) leaves the {' and '.join(empty)} set empty "
            f"(train {sizes[0]}, valid {sizes[1]}, test {sizes[2]} pairs); "
            "change data.split (dates, ratios) or filter less"
        )
    return out
