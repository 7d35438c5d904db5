"""Stable hashing: the same key maps to the same number in every process and on every machine.

Python's ``hash()`` is salted per process (PYTHONHASHSEED), so hash strategies use BLAKE2b instead.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["HASH_SPACE", "hash64", "hash64_many"]

HASH_SPACE = 1 << 64


def hash64(key: str) -> int:
    """A stable 64-bit hash of ``key``."""
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def hash64_many(key: str, count: int) -> list[int]:
    """``count`` stable, independent 64-bit values derived from ``key`` (8 per BLAKE2b digest).

    The first ``k`` values do not depend on ``count``, so asking for more only adds values.
    """
    values: list[int] = []
    block = 0
    while len(values) < count:
        digest = blake2b(f"{key}#{block}".encode("utf-8", "surrogatepass"), digest_size=64).digest()
        values.extend(int.from_bytes(digest[i : i + 8], "big") for i in range(0, 64, 8))
        block += 1
    return values[:count]
