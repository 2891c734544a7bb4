"""Eviction policies: which cached, unreferenced KV block is reused first.

The ``BlockManager`` keeps blocks whose reference count fell to zero but whose
content is hashed (reusable by a later prefix hit) in an *evictable pool*. When
it needs a block and the free list is empty it asks the pool's policy for a
victim. Policies see ``Block`` records (ids, logical use times, hit counts,
children in the prefix tree) and no clock: times are a logical counter.

A new policy is one subclass plus one line in ``EVICTION_POLICIES``.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import OrderedDict


class Block:
    """Bookkeeping of one KV block (no tensor: the engine maps ids to KV slots).

    ``key`` is ``(parent_chain_hash, content)`` for a cached full block, else None;
    ``chain_hash`` is ``hash(key)``, the parent hash of the block after it.
    """

    __slots__ = ("block_id", "ref_count", "key", "chain_hash", "parent", "num_children",
                 "last_used", "hit_count", "cached_at")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.key: tuple | None = None
        self.chain_hash = 0
        self.parent: Block | None = None  # previous block of the prefix, if cached
        self.num_children = 0  # cached blocks whose parent this is
        self.last_used = 0
        self.hit_count = 0
        self.cached_at = 0

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_count}, cached={self.key is not None})"


class EvictionPolicy(ABC):
    """Orders the evictable pool.

    The manager calls ``add`` when a cached block's reference count drops to
    0, ``remove`` when a pooled block is reused by a prefix hit, ``pop`` to
    take a victim, and ``on_leaf`` when a pooled block's last cached child was
    evicted.
    """

    @abstractmethod
    def add(self, block: Block) -> None: ...

    @abstractmethod
    def remove(self, block: Block) -> None: ...

    @abstractmethod
    def pop(self) -> Block:
        """Remove and return the block to evict. Only called when the pool is not empty."""

    @abstractmethod
    def __len__(self) -> int: ...

    def on_leaf(self, block: Block) -> None:  # noqa: B027 - optional hook
        """``block`` (in the pool) has no cached children any more."""


class LRU(EvictionPolicy):
    """Least recently used first. Blocks of a finished sequence are released
    tail first, so among them the deepest prefix blocks go first."""

    def __init__(self) -> None:
        self._pool: OrderedDict[int, Block] = OrderedDict()

    def add(self, block: Block) -> None:
        self._pool[block.block_id] = block

    def remove(self, block: Block) -> None:
        del self._pool[block.block_id]

    def pop(self) -> Block:
        return self._pool.popitem(last=False)[1]

    def __len__(self) -> int:
        return len(self._pool)


class _HeapPolicy(EvictionPolicy):
    """A pool ordered by ``priority(block)`` (smallest evicted first), with lazy deletion."""

    def __init__(self) -> None:
        self._heap: list[tuple] = []
        self._members: dict[int, int] = {}  # block id -> entry version currently valid
        self._versions = itertools.count()

    def priority(self, block: Block) -> tuple:
        raise NotImplementedError

    def eligible(self, block: Block) -> bool:
        return True

    def _push(self, block: Block) -> None:
        version = next(self._versions)
        self._members[block.block_id] = version
        heapq.heappush(self._heap, (*self.priority(block), version, block))

    def add(self, block: Block) -> None:
        if self.eligible(block):
            self._push(block)
        else:
            self._members[block.block_id] = -1  # pooled, not yet eligible

    def remove(self, block: Block) -> None:
        del self._members[block.block_id]

    def pop(self) -> Block:
        while True:
            *_, version, block = heapq.heappop(self._heap)
            if self._members.get(block.block_id) == version:
                del self._members[block.block_id]
                return block

    def __len__(self) -> int:
        return len(self._members)


class LFU(_HeapPolicy):
    """Least frequently hit first; ties broken by least recent use."""

    def priority(self, block: Block) -> tuple:
        return (block.hit_count, block.last_used)


class FIFO(_HeapPolicy):
    """The block cached earliest goes first, however often it was reused since."""

    def priority(self, block: Block) -> tuple:
        return (block.cached_at,)


class PrefixTreeLRU(_HeapPolicy):
    """Leaf-first LRU over the prefix tree: only blocks with no cached child are
    candidates, so a shared prefix outlives every branch that extends it."""

    def priority(self, block: Block) -> tuple:
        return (block.last_used,)

    def eligible(self, block: Block) -> bool:
        return block.num_children == 0

    def on_leaf(self, block: Block) -> None:
        if self._members.get(block.block_id) == -1:
            self._push(block)


EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRU,
    "lfu": LFU,
    "fifo": FIFO,
    "prefix-lru": PrefixTreeLRU,
}


def make_eviction_policy(name: str) -> EvictionPolicy:
    """Build an eviction policy by name (see ``EVICTION_POLICIES``)."""
    try:
        return EVICTION_POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown eviction policy {name!r}; choose one of {sorted(EVICTION_POLICIES)}"
        ) from None
