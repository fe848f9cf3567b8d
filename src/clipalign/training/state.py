"""Training checkpoints: written atomically, found again after a crash, refused when the run differs.

A checkpoint is a folder ``OUT/checkpoints/step-NNNNNNNN/`` holding ``model.safetensors`` (every weight of
the model, fp32) and ``state.pt`` (optimizer, scheduler, gradient scaler and RNG states, the position in
the data and the settings that decide the numbers), read back weights-only. It is written under a
temporary name and renamed into place, and ``OUT/checkpoints/latest`` (renamed into place too) names the
newest, so a run killed at any moment leaves either the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
WEIGHTS = "model.safetensors"
STATE = "state.pt"


@dataclass(frozen=True)
class Position:
    """Where training stands: optimizer steps done, the epoch, and the stream pairs of it used up."""

    step: int = 0
    epoch: int = 0
    taken: int = 0


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text`` in one rename (readers see the old or the new file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """torch's CPU generator and, where present, every CUDA generator."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: Path,
    position: Position,
    model: torch.nn.Module,
    states: dict[str, Any],
    settings: dict[str, Any],
    keep: int,
) -> Path:
    """Write the checkpoint of ``position`` under ``root`` and point ``latest`` at it; keep the newest
    ``keep`` checkpoints. ``states`` holds the optimizer, scheduler and scaler state dicts."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{position.step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    weights = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS))
    payload = {
        "position": [position.step, position.epoch, position.taken],
        "settings": json.dumps(settings, sort_keys=True),
        "rng": rng_state(),
        **states,
    }
    torch.save(payload, tmp / STATE)
    for name in (WEIGHTS, STATE):
        with (tmp / name).open("rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomically(root / LATEST, final.name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


@dataclass
class Resumed:
    """A checkpoint read back: where it stands, the weights and the saved states."""

    position: Position
    weights: dict[str, torch.Tensor]
    states: dict[str, Any]


def latest(root: Path, settings: dict[str, Any]) -> Resumed | None:
    """The newest complete checkpoint under ``root``, or None; one written with other settings is a
    ValueError (a run cannot continue another one's)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text(encoding="utf-8").strip()
    state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    saved = json.loads(state.pop("settings"))
    if saved != settings:
        changed = sorted(k for k in {*saved, *settings} if saved.get(k) != settings.get(k))
        raise ValueError(
            f"{root.parent} holds a run with other settings ({', '.join(changed)} differ): "
            "give another --out, or --overwrite to start again"
        )
    position = Position(*state.pop("position"))
    return Resumed(position, load_file(str(folder / WEIGHTS)), state)
