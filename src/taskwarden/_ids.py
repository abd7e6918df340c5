"""Task ids: UUID strings derived from a random per-supervisor base and a sequence number.

Making a uuid4 per task costs microseconds and memory on the submit path; a
random base XOR a counter gives ids that are unique, in uuid4 form, made only
when asked for, and that map back to their task in O(1).
"""

from __future__ import annotations

import uuid

SEQ_BITS = 48
SEQ_MASK = (1 << SEQ_BITS) - 1


def new_base() -> int:
    """A random uuid4 whose low 48 bits are zero, so a sequence number XORs into them."""
    return uuid.uuid4().int & ~SEQ_MASK


def make_uuid(base: int, seq: int) -> str:
    return str(uuid.UUID(int=base ^ (seq & SEQ_MASK)))


def seq_of(base: int, task_id: str) -> int | None:
    """The sequence number behind ``task_id`` if it was made from ``base``, else None."""
    try:
        value = uuid.UUID(task_id).int
    except (ValueError, TypeError, AttributeError):
        return None
    if value & ~SEQ_MASK != base:
        return None
    return value & SEQ_MASK
