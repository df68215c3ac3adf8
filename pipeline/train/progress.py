"""The step-level progress bar: the batches of one epoch, under the epoch bar.

Small models on small data train an epoch in well under a second, where a second bar would only
flicker; a bar per epoch is enough there. An epoch of H&M or an end-to-end run takes minutes, and
without one the run looks stuck. So the bar appears only once an epoch has been running for
``SHOW_AFTER_SECONDS``, or from the first batch when the previous epoch took that long.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

# long enough that a fast epoch never draws a second bar, short enough that nobody wonders
SHOW_AFTER_SECONDS = 3.0


class StepBar:
    """One per training run; ``start`` each epoch, ``step`` after each batch, ``end`` after it."""

    def __init__(self, total: int, *, enabled: bool, show_after: float | None = None):
        self.total, self.enabled = total, enabled
        self.show_after = SHOW_AFTER_SECONDS if show_after is None else show_after
        self.bar: tqdm | None = None
        self.long_epochs = False  # the previous epoch took at least show_after
        self.epoch, self.started, self.steps = 0, 0.0, 0

    def start(self, epoch: int) -> None:
        self.epoch, self.started, self.steps = epoch, time.perf_counter(), 0
        if self.enabled and self.long_epochs:
            self._open()

    def step(self, mean_loss: float) -> None:
        """After a batch; ``mean_loss`` is the epoch's running mean so far."""
        self.steps += 1
        if self.bar is None:
            if not self.enabled or time.perf_counter() - self.started < self.show_after:
                return
            self._open()
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        self.bar.update(self.steps - self.bar.n)  # refreshes at tqdm's own interval

    def end(self) -> None:
        self.long_epochs = time.perf_counter() - self.started >= self.show_after
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _open(self) -> None:
        # position 1: under the epoch bar; leave=False: a finished epoch's bar makes room for the next
        self.bar = tqdm(total=self.total, initial=self.steps, desc=f"epoch {self.epoch}", unit="batch",
                        position=1, leave=False, dynamic_ncols=True)
