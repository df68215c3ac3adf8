"""Every registered model has a card (family, paper, caches) and a row in docs/models.md that
says the same (benchmarks/model_cards.py --write regenerates the table)."""

import re

from pipeline.models import MODELS

from conftest import REPO


def test_every_model_has_a_card_and_a_row_in_the_docs():
    doc = (REPO / "docs" / "models.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9_]+)` \|.*$", doc, re.M)}
    # the package's models: other tests register toy ones from their own modules
    shipped = [n for n in MODELS if MODELS.get(n).__module__.startswith("pipeline.models.")]
    for name in shipped:
        spec = MODELS.get(name)
        assert spec.family and spec.paper and spec.caches, f"model {name}: family, paper and caches must be set"
        assert name in rows, f"docs/models.md has no row for model {name}: run benchmarks/model_cards.py --write"
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == spec.family and cells[2] == spec.paper and cells[4] == spec.caches, (name, cells)
        assert cells[5] == ("no" if spec.no_live_encoders else "yes"), (name, cells)
    assert set(rows) == set(shipped), f"docs/models.md lists models that are not registered: {set(rows) - set(shipped)}"
