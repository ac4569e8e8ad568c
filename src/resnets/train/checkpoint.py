"""Training checkpoints (``last.pt``): everything needed to continue a run exactly, stored as tensors
and primitive containers only, so it loads with ``torch.load(weights_only=True)`` and never runs code.

Holds: model and EMA weights, optimizer and grad-scaler state, every RNG state (torch CPU/CUDA,
NumPy, Python), the step/epoch/batch position and the epoch's running sums, the model spec, class
names, normalisation and the full resolved config. Written with ``resnets.weights.atomic_write``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weights import CheckpointError, atomic_write

__all__ = ["CHECKPOINT_KIND", "capture_rng_state", "load_training_checkpoint", "restore_rng_state",
           "save_training_checkpoint"]

CHECKPOINT_KIND = "resnets-train"
CHECKPOINT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and primitives."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": int(version), "state": torch.tensor(mt_state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (already plain data) with the checkpoint kind/version tags."""
    body = {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(body, tmp))


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``last.pt`` written by the trainer (weights-only; refuses anything else)."""
    from ..weights import checkpoint_file_kind

    path = Path(path)
    if path.parent.is_file():  # `--resume RUN/best.safetensors`: the run is the folder around it
        raise CheckpointError(f"{str(path.parent)!r} is a file; resuming takes the run folder that holds last.pt "
                              f"(e.g. {str(path.parent.parent)!r})")
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {str(path)!r}; a run folder holds last.pt after its "
                              "first epoch (was the run started with --out there?)")
    if checkpoint_file_kind(path) not in ("torch-zip", "torch-legacy"):
        raise CheckpointError(f"{str(path)!r} is not a readable training checkpoint: not a PyTorch file (first bytes "
                              f"{path.read_bytes()[:8]!r}); it may be damaged: resume from an intact copy, or start a "
                              "new run")
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for torn or unsafe files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in reason:  # torch's advice (load with weights_only=False) is not one to follow here
            reason = "not tensors and plain data only, as every last.pt resnets writes"
        raise CheckpointError(f"{str(path)!r} is not a readable training checkpoint ({reason}); it may be damaged: "
                              "resume from an intact copy, or start a new run") from None
    if not isinstance(body, dict) or body.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{str(path)!r} is not a resnets training checkpoint (no 'kind: {CHECKPOINT_KIND}')")
    if body.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{str(path)!r} was written by a newer resnets (format {body['version']}); upgrade")
    return body
