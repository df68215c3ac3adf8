"""What a run does besides training, as callbacks: the trainer calls them on the main process."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..config import Config
from ..data import PreparedData
from .run import Run


class Callback(Protocol):
    def on_end(self, run: Run, model: torch.nn.Module, result: dict[str, Any]) -> None:
        """After the last epoch, before the result is written (it may add to ``result``)."""


class ExportFinetuned:
    """The end-to-end track: the catalog as the best epoch's encoders see it goes to the feature
    store, where frozen models read it (``features: {x: {run: RUN_DIR}}``)."""

    def __init__(self, cfg: Config, data: PreparedData):
        self.cfg, self.data = cfg, data

    def on_end(self, run: Run, model: torch.nn.Module, result: dict[str, Any]) -> None:
        from ..live import export_finetuned

        run.load_best(model)
        result["finetuned_features"] = export_finetuned(self.cfg, self.data, model, run.path)
