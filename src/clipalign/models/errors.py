"""Why a model could not be loaded, in one line that says what to do next.

Kept free of torch and transformers, so the command line can catch :class:`ModelLoadError` and check a
``--model`` path without importing them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

CONFIG_FILE = "config.json"


class ModelLoadError(RuntimeError):
    """A model, tokenizer or image processor could not be loaded (name unknown, offline, missing files)."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint was found, but clipalign has no adapter for its architecture (or it needs remote
    code): asking the Hub again would not help."""


def unsupported_reason(config: Mapping[str, object], supported: Collection[str]) -> str | None:
    """Why clipalign cannot load a checkpoint with this ``config.json`` (as a dict), or None when it can.

    A supported ``model_type`` loads with clipalign's own adapter, whose built-in transformers class
    ignores ``auto_map``; any other checkpoint with ``auto_map`` needs its own Python code (jina-clip and
    other ``trust_remote_code`` models), which clipalign never runs.
    """
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in supported:
        return None
    if "auto_map" in config:
        return (
            f"it needs its own Python code from its repository (config.json has auto_map, model_type "
            f"{model_type!r}), and clipalign never runs remote code (trust_remote_code)"
        )
    if not isinstance(model_type, str):
        return (
            f"its {CONFIG_FILE} names no model_type, so its architecture is unknown (an open_clip or "
            "original-format checkpoint needs converting to HF format first)"
        )
    return f"clipalign has no adapter for model_type {model_type!r}"


def check_supported(name: str, config: Mapping[str, object], supported: Collection[str]) -> str:
    """The ``model_type`` of checkpoint ``name`` from its ``config.json`` (as a dict), or a one-line
    :class:`UnsupportedModelError` naming the supported families.

    Decided from the JSON alone, before transformers builds anything, so a remote-code checkpoint is
    refused before any of its code is fetched or run.
    """
    reason = unsupported_reason(config, supported)
    if reason is not None:
        raise UnsupportedModelError(
            f"cannot load model {name!r}: {reason}; supported families: {', '.join(sorted(supported))} "
            "(`clipalign models` lists them and what each needs)"
        )
    return str(config["model_type"])


OFFLINE_HINT = (
    "to try clipalign offline, use the small model that ships with it (--model synthetic); or download "
    "{name} where the Hub is reachable (`hf download {name} --local-dir DIR`) and pass --model DIR"
)
"""What to do when a Hub name cannot be fetched; ``{name}`` is the name asked for."""


def looks_like_path(name: str) -> bool:
    """True for names that can only be a local path: ``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x/``, ``C:\\x``.

    Hub repo ids are ``name`` or ``owner/name``, so anything else is never sent to the Hub.
    """
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def check_local_path(name: str) -> Path | None:
    """The local checkpoint folder ``name`` names, or None when it names a Hub repo.

    A path-looking name that does not exist, a file, or a folder without ``config.json`` is a
    :class:`ModelLoadError` saying so, before transformers (or the Hub) is asked.
    """
    path = Path(name).expanduser()
    if not path.exists():
        if looks_like_path(name):
            raise ModelLoadError(f"cannot load model {name!r}: the path {str(path)!r} does not exist")
        return None
    if not path.is_dir():
        raise ModelLoadError(
            f"cannot load model {name!r}: {str(path)!r} is a file; pass the checkpoint's folder "
            "(the one with config.json)"
        )
    if not (path / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"cannot load model {name!r}: the folder {str(path)!r} has no {CONFIG_FILE}, so it holds no "
            "checkpoint: pass the folder that holds the checkpoint's config.json and weights"
        )
    return path


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def hub_problem(name: str, exc: BaseException) -> str | None:
    """What went wrong asking the Hub for ``name``, in words, or None when the Hub is not the problem."""
    from huggingface_hub import errors, is_offline_mode

    chain = _chain(exc)
    kinds = tuple(type(e) for e in chain)
    if any(issubclass(k, errors.GatedRepoError) for k in kinds):
        return f"{name} is a gated model on the Hugging Face Hub: accept its terms, then `hf auth login`"
    if any(issubclass(k, (errors.RepositoryNotFoundError, errors.HFValidationError)) for k in kinds):
        return (
            f"there is no model {name!r} on the Hugging Face Hub (or it is private: log in with "
            "`hf auth login`), and no local folder of that name"
        )
    if any(issubclass(k, errors.RevisionNotFoundError) for k in kinds):
        return f"the Hub has no such revision of {name}"
    if any(issubclass(k, errors.RemoteEntryNotFoundError) for k in kinds):
        return f"{name} on the Hub lacks a file a CLIP checkpoint needs ({_first_line(chain[-1])})"
    if is_offline_mode() or any(issubclass(k, errors.OfflineModeIsEnabled) for k in kinds):
        return (
            f"{name} is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set, so the Hub "
            "was not asked"
        )
    connection = [e for e in chain[1:] if _is_connection_error(e)]
    if connection or any(issubclass(k, errors.LocalEntryNotFoundError) for k in kinds):
        reason = f" ({_first_line(connection[-1])})" if connection else ""
        return f"could not reach the Hugging Face Hub{reason}, and {name} is not in the local cache"
    return None


def _is_connection_error(exc: BaseException) -> bool:
    """A network failure: a socket error or an HTTP client's connect/timeout error (httpx or requests)."""
    names = {k.__name__ for k in type(exc).__mro__}
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(
        names & {"gaierror", "ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError"}
    )


def model_load_error(name: str, exc: BaseException, *, offline_hint: bool = False) -> ModelLoadError:
    """A one-line error saying why loading ``name`` failed and what to try next.

    A Hub failure (no such repo, gated, offline, no connection) is named as such, with a way to work
    offline (``hf download`` and a local folder; with ``offline_hint``, for CLIP checkpoints, also the
    bundled synthetic CLIP); a local folder that did not load is pointed at its files.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return ModelLoadError(
            f"cannot load model {name!r}: {_first_line(exc)} — check that this directory holds a complete "
            "checkpoint written by save_pretrained"
        )
    problem = hub_problem(name, exc) or _first_line(exc)
    if not offline_hint:
        return ModelLoadError(
            f"cannot load model {name!r}: {problem} — download it where the Hub is reachable "
            f"(`hf download {name} --local-dir DIR`) and pass DIR"
        )
    return ModelLoadError(f"cannot load model {name!r}: {problem} — {OFFLINE_HINT.format(name=name)}")
