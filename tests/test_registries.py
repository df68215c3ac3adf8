"""Extension points: a recommender, a split protocol and a metric defined in this test module
(no edit to the package) work through the normal config path, and their settings are validated
like the built-ins'."""

import numpy as np
import pytest
import torch
from pydantic import Field

from pipeline.config import SplitConfig, load_config
from pipeline.data import prepare
from pipeline.data.splits import TEST, TRAIN, VALID, SplitProtocol, register_split, split_pairs
from pipeline.errors import ConfigError
from pipeline.eval import Evaluator, Ranking, register_metric
from pipeline.models import BuildContext, ModelSpec, Recommender, register_model
from pipeline.train import needed_features, run_training

from conftest import REPO
from test_splits import random_pairs

DEMO = REPO / "recipes" / "configs" / "demo.yaml"


def popularity_prior(train_items: np.ndarray, n_items: int, reverse: bool) -> np.ndarray:
    """Training counts with distinct fractional tie-breaks (no ties for topk to order)."""
    prior = np.bincount(train_items, minlength=n_items) + 0.5 * (np.arange(n_items) + 1) / (n_items + 1)
    return -prior if reverse else prior


class ScaledPopularity(Recommender):
    """The prior times a learned positive scale: the ranking is the prior's whatever it learns."""

    def __init__(self, prior: np.ndarray):
        super().__init__()
        self.register_buffer("prior", torch.from_numpy(prior).float(), persistent=False)
        self.log_scale = torch.nn.Parameter(torch.zeros(()))

    def loss(self, batch):
        diff = self.prior[batch["pos"]] - self.prior[batch["neg"]]
        return -torch.nn.functional.logsigmoid(self.log_scale.exp() * diff).mean()

    def score(self, users):
        return (self.log_scale.exp() * self.prior).expand(len(users), -1)


@register_model("toy_popularity")
class ToyPopularitySpec(ModelSpec):
    reverse: bool = False  # rank the least popular items first

    def build(self, ctx: BuildContext) -> ScaledPopularity:
        return ScaledPopularity(popularity_prior(ctx.data.pairs("train")[1], ctx.data.n_items, self.reverse))


@register_split("every_nth")
class EveryNth(SplitProtocol):
    """In file order, of every ``period`` pairs the second-last goes to valid and the last to test."""

    period: int = Field(5, ge=3)

    def assign(self, pairs, rng):
        phase = pairs.order % self.period
        return np.where(phase == self.period - 1, TEST, np.where(phase == self.period - 2, VALID, TRAIN)).astype(np.int8)


@register_metric("hits")
def hits(r: Ranking, k: int) -> torch.Tensor:
    return r.cum_hits[:, k - 1]  # relevant items in the top k


def every_nth_reference(order, period: int) -> list[int]:
    return [2 if o % period == period - 1 else 1 if o % period == period - 2 else 0 for o in order]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registries")
    overrides = [f"cache_dir={tmp}", f"data.root={tmp}/raw", "data.demo.n_items=60", "data.demo.n_users=80",
                 "data.demo.mean_interactions=10", "data.split.protocol=every_nth", "data.split.period=4"]
    return overrides, prepare(load_config(DEMO, overrides), progress=False)


def test_split_protocol_from_a_test_module_prepares_the_data(demo):
    overrides, data = demo
    table = data.interactions.data
    order, split = table.column("order").to_numpy(), table.column("split").to_numpy()
    assert split.tolist() == every_nth_reference(order, 4)
    saved = data.config["data"]["split"]
    assert (saved["protocol"], saved["period"]) == ("every_nth", 4)
    # the demo config's cold_items belongs to cold_start: kept, validated, not read by every_nth
    assert saved["cold_items"] == 0.2 and load_config(DEMO, overrides).data.split.params == EveryNth(period=4)


def test_split_protocol_through_split_config():
    pairs = random_pairs(seed=3)
    got = split_pairs(pairs, SplitConfig(protocol="every_nth", period=6))
    assert got.tolist() == every_nth_reference(pairs.order, 6)


def reference_metrics(data, prior: np.ndarray, ks) -> dict[str, float]:
    """Test-split recall@k and hits@k of one global ranking, by a loop over users."""
    seen, truth = {}, {}
    for split in ("train", "valid"):
        for u, i in zip(*data.pairs(split)):
            seen.setdefault(u, set()).add(i)
    train_users = set(data.pairs("train")[0].tolist())
    for u, i in zip(*data.pairs("test")):
        truth.setdefault(u, set()).add(i)
    order = np.argsort(-prior, kind="stable")
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "hits")}
    users = [u for u in truth if u in train_users]
    for u in users:
        ranked = [i for i in order if i not in seen[u]]
        for k in ks:
            n = len(set(ranked[:k]) & truth[u])
            totals[f"hits@{k}"] += n
            totals[f"recall@{k}"] += n / len(truth[u])
    return {name: v / len(users) for name, v in totals.items()}


def test_model_and_metric_from_a_test_module_train_through_the_config(demo, tmp_path):
    overrides, data = demo
    results = {}
    for reverse in (False, True):
        cfg = load_config(DEMO, [*overrides, "model.name=toy_popularity", f"model.toy_popularity.reverse={reverse}",
                                 "eval.metrics=[recall,hits]", "eval.ks=[5,10]", "train.valid_metric=hits@10",
                                 "train.epochs=2", "train.batch_size=256", f"train.runs_dir={tmp_path}",
                                 "train.tensorboard=false", "train.progress=false"])
        assert cfg.model.params == ToyPopularitySpec(reverse=reverse) and needed_features(cfg) == []
        r = run_training(cfg, data)
        prior = popularity_prior(data.pairs("train")[1], data.n_items, reverse)
        want = reference_metrics(data, prior, (5, 10))
        assert {n: r["test"][n] for n in want} == pytest.approx(want, abs=1e-6)
        results[reverse] = want
    assert results[False]["hits@10"] > results[True]["hits@10"]  # the setting reached the model


@pytest.mark.parametrize("override, words", [
    (["model.name=toy_popularity", "model.toy_popularity.reverse=maybe"], r"model\.toy_popularity\.reverse: "),
    (["model.toy_popularity.revers=true"], r"model\.toy_popularity\.revers: unknown key"),
    (["model.toy_populariti.reverse=true"], r"model\.toy_populariti: unknown key"),
    (["model.name=toy"], r"model\.name: Input should be 'bpr'.*'toy_popularity'.* \(got 'toy'\)"),
    (["compare.model=toy"], r"compare\.model: Input should be 'bpr'.*'toy_popularity'"),
    (["data.split.period=2"], r"data\.split\.period: Input should be greater than or equal to 3"),
    (["data.split.perod=4"], r"data\.split\.perod: unknown key"),
    (["data.split.protocol=nth"], r"data\.split\.protocol: Input should be .*'every_nth'"),
    (["eval.metrics=[recall,hit5]"], r"eval\.metrics\.1: Input should be 'recall'.*'hits' \(got 'hit5'\)"),
])
def test_settings_of_registered_entries_are_validated(demo, override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(DEMO, [*demo[0], *override])


def test_a_model_section_validates_even_when_another_model_is_chosen(demo):
    cfg = load_config(DEMO, [*demo[0], "model.name=bpr", "model.toy_popularity.reverse=true"])
    assert cfg.model.params.reg_weight == 0.01 and cfg.model.toy_popularity.reverse is True
    assert cfg.to_dict()["model"]["toy_popularity"] == {"reverse": True}


def test_names_are_taken_once_and_unknown_metrics_fail_early():
    class Other(ModelSpec):
        def build(self, ctx):
            raise AssertionError("never built")

    with pytest.raises(ValueError, match="model 'bpr' is already registered"):
        register_model("bpr")(Other)
    with pytest.raises(ValueError, match="letters, digits"):
        register_metric("recall@5")
    with pytest.raises(ValueError, match="taken by the evaluator"):
        register_metric("coverage")
    with pytest.raises(ConfigError, match="no metric named 'nope'"):
        Evaluator(3, 4, (np.array([0]), np.array([1])), (np.array([0]), np.array([2])), metrics=("recall", "nope"))
