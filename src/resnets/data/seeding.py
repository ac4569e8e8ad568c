"""Seeds derived from tuples, so every random draw is a pure function of (seed, epoch, batch, ...)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across processes and Python runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator_for(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts`` (draw on CPU, then move: same numbers on every device)."""
    return torch.Generator().manual_seed(derive_seed(*parts))
