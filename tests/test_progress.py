"""The step-level progress bar: shown only for long epochs, under the epoch bar, with the running
loss; never with progress off; and the epoch bar shows no metric before the first evaluation."""

import io

import pytest

from conftest import REPO

DEMO = REPO / "recipes" / "configs" / "demo.yaml"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def recorded(monkeypatch):
    """Every step bar made, with its final count, start count and last postfix."""
    from tqdm import tqdm

    import pipeline.train.progress as progress

    bars = []

    class Recording(tqdm):
        def __init__(self, *a, **kw):
            kw["file"] = io.StringIO()  # drawn out of sight (a disabled bar would not count)
            super().__init__(*a, **kw)
            self.first, self.postfixes, self.kw = self.n, [], kw
            bars.append(self)

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            self.postfixes.append(dict(kwargs))

    monkeypatch.setattr(progress, "tqdm", Recording)
    return bars


def test_bar_appears_once_an_epoch_runs_long(monkeypatch, recorded):
    import pipeline.train.progress as progress

    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    bar = progress.StepBar(10, enabled=True, show_after=3.0)

    bar.start(0)  # a fast epoch: 10 steps in 1 s
    for i in range(10):
        clock.now += 0.1
        bar.step(float(i))
    bar.end()
    assert recorded == []

    bar.start(1)  # a slow one: 1 s a step, so the bar appears with the 3rd step
    for i in range(10):
        clock.now += 1.0
        bar.step(float(i))
    bar.end()
    assert len(recorded) == 1
    first = recorded[0]
    assert first.first == 3 and first.n == 10 and first.total == 10
    assert first.kw["desc"] == "epoch 1" and first.kw["position"] == 1 and first.kw["leave"] is False
    assert first.postfixes[-1] == {"loss": "9.0000"} and len(first.postfixes) == 8

    bar.start(2)  # the previous epoch was long: this one shows from its first step, however fast
    for i in range(4):
        clock.now += 0.01
        bar.step(1.0)
    bar.end()
    assert len(recorded) == 2 and recorded[1].first == 0 and recorded[1].n == 4

    bar.start(3)  # epoch 2 was fast again: no bar
    bar.step(1.0)
    bar.end()
    assert len(recorded) == 2


def test_no_bar_with_progress_off(monkeypatch, recorded):
    import pipeline.train.progress as progress

    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    bar = progress.StepBar(5, enabled=False, show_after=0.0)
    for epoch in range(2):
        bar.start(epoch)
        for _ in range(5):
            clock.now += 10.0
            bar.step(1.0)
        bar.end()
    assert recorded == []


@pytest.mark.parametrize("progress", [True, False])
def test_trainer_feeds_the_step_bar(tmp_path, monkeypatch, recorded, progress):
    """Through a real run: with every epoch 'long', each epoch has a bar that counted all its
    batches and ended on the epoch's mean loss; the epoch bar has no metric before the first
    evaluation (eval_every=2)."""
    from accelerate import Accelerator

    import pipeline.train.progress as progress_module
    import pipeline.train.trainer as trainer
    from pipeline import api

    monkeypatch.setattr(progress_module, "SHOW_AFTER_SECONDS", 0.0)
    epoch_postfixes = []
    real_tqdm = trainer.tqdm

    class EpochBar(real_tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            epoch_postfixes.append(dict(kwargs))

    monkeypatch.setattr(trainer, "tqdm", EpochBar)
    result = api.train(DEMO, [f"cache_dir={tmp_path}", f"data.root={tmp_path}/raw", "data.demo.n_items=60",
                              "data.demo.n_users=50", "model.name=bpr", "train.epochs=3", "train.eval_every=2",
                              "train.batch_size=64", "train.tensorboard=false", "eval.ks=[20]",
                              f"train.progress={str(progress).lower()}"], accelerator=Accelerator(cpu=True))
    history = result["history"]
    if not progress:
        assert recorded == []
        return
    assert [b.kw["desc"] for b in recorded] == ["epoch 0", "epoch 1", "epoch 2"]
    n_batches = recorded[0].total
    assert n_batches > 1
    # epoch 0 learns it is long with its first step; later ones follow a long epoch, so start at 0
    assert [b.first for b in recorded] == [1, 0, 0]
    for bar, epoch in zip(recorded, history):
        assert bar.n == n_batches
        assert bar.postfixes[-1] == {"loss": f"{epoch['loss']:.4f}"}
    assert "recall@20" not in epoch_postfixes[0] and "recall@20" in epoch_postfixes[1]
