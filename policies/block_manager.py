"""Paged KV-cache bookkeeping in pure Python: the same object in both worlds.

Blocks hold ``block_size`` tokens. A sequence's block table lists its blocks in
token order. Full prompt blocks, once computed, are registered under a chained
content key so a later sequence with an identical prefix reuses them (prefix
caching). Invariants (checked by ``check_invariants``):

* every block is in exactly one of: the free list (ref 0, uncached), the
  evictable pool (ref 0, cached), or in use (ref > 0);
* a block's reference count equals the number of block tables holding it;
* the cache maps a key to exactly one block, whose ``key`` is that key.
"""

from __future__ import annotations

from collections.abc import Iterable

from policies.eviction import LRU, Block, EvictionPolicy


def chain_keys(contents: Iterable[tuple[int, ...]]) -> list[tuple]:
    """Chain content keys so a block's key names its whole prefix.

    Args:
        contents: per-block content tuples (``Request.block_contents``).

    Returns:
        ``keys[i] = (hash(keys[i - 1]), contents[i])`` (parent hash 0 for block 0).
    """
    keys: list[tuple] = []
    parent = 0
    for content in contents:
        key = (parent, content)
        keys.append(key)
        parent = hash(key)
    return keys


class BlockManager:
    """Allocates, shares, caches and evicts KV blocks.

    Args:
        num_blocks: device KV blocks in the pool.
        block_size: tokens per block.
        eviction: orders the evictable pool (default LRU).
        num_cpu_blocks: host blocks for swap preemption.
        enable_prefix_caching: register full prompt blocks for reuse.
    """

    def __init__(self, num_blocks: int, block_size: int, eviction: EvictionPolicy | None = None,
                 num_cpu_blocks: int = 0, enable_prefix_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if num_cpu_blocks < 0:
            raise ValueError(f"num_cpu_blocks must be >= 0, got {num_cpu_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        # Block records are created on first use: blocks[i] exists for i < len(blocks); ids
        # from len(blocks) to num_blocks - 1 are fresh and free, beside the recycled free_ids.
        self.blocks: list[Block] = []
        self.free_ids: list[int] = []
        self.evictable = eviction if eviction is not None else LRU()
        self.cache: dict[tuple, Block] = {}
        self.num_used = 0  # blocks with ref_count > 0
        self.num_cpu_blocks = num_cpu_blocks
        self.free_cpu_ids: list[int] = list(range(num_cpu_blocks - 1, -1, -1))
        self._tick = 0  # logical clock for eviction policies

    # ---------------------------------------------------------------- queries
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: free plus evictable."""
        return self.num_blocks - self.num_used

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by live sequences."""
        return self.num_used / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, keys: list[tuple], max_blocks: int | None = None) -> int:
        """Number of leading blocks of ``keys`` that are cached (read-only)."""
        n = 0
        limit = len(keys) if max_blocks is None else min(max_blocks, len(keys))
        cache = self.cache
        while n < limit and keys[n] in cache:
            n += 1
        return n

    # ------------------------------------------------------------ allocation
    def acquire_prefix(self, table: list[int], keys: list[tuple], max_blocks: int) -> int:
        """Append the leading cached blocks of ``keys`` (at most ``max_blocks``) to an
        empty ``table`` and take a reference on each.

        Returns:
            The number of blocks reused.
        """
        assert not table, "acquire_prefix needs an empty block table"
        if not self.enable_prefix_caching:
            return 0
        n = self.match_prefix(keys, max_blocks)
        self._tick += 1
        for key in keys[:n]:
            block = self.cache[key]
            if block.ref_count == 0:
                self.evictable.remove(block)
                self.num_used += 1
            block.ref_count += 1
            block.hit_count += 1
            block.last_used = self._tick
            table.append(block.block_id)
        return n

    def allocate(self, table: list[int], num_tokens: int) -> bool:
        """Grow ``table`` so it covers ``num_tokens`` tokens.

        Returns:
            False, changing nothing, when not enough blocks are free or evictable.
        """
        need = -(-num_tokens // self.block_size) - len(table)
        if need <= 0:
            return True
        if need > self.num_blocks - self.num_used:
            return False
        for _ in range(need):
            table.append(self._take().block_id)
        return True

    def _take(self) -> Block:
        if self.free_ids:
            block = self.blocks[self.free_ids.pop()]
        elif len(self.blocks) < self.num_blocks:
            block = Block(len(self.blocks))
            self.blocks.append(block)
        else:
            block = self.evictable.pop()
            self._uncache(block)
        block.ref_count = 1
        self.num_used += 1
        return block

    def _uncache(self, block: Block) -> None:
        del self.cache[block.key]
        parent = block.parent
        if parent is not None:
            parent.num_children -= 1
            if parent.num_children == 0 and parent.ref_count == 0:
                self.evictable.on_leaf(parent)
        block.key, block.parent, block.hit_count = None, None, 0

    def commit(self, table: list[int], keys: list[tuple], num_computed: int) -> None:
        """Register the full prompt blocks among the first ``num_computed`` tokens.

        Blocks already registered are skipped; a block whose key another block
        already holds (both computed the same prefix) stays uncached.
        """
        if not self.enable_prefix_caching:
            return
        upto = min(num_computed // self.block_size, len(keys))
        blocks, cache = self.blocks, self.cache
        for i in range(upto):
            block = blocks[table[i]]
            if block.key is not None:
                continue
            key = keys[i]
            if key in cache:
                continue
            block.key = key
            block.chain_hash = hash(key)
            self._tick += 1
            block.cached_at = self._tick
            cache[key] = block
            parent = cache.get(keys[i - 1]) if i > 0 else None
            if parent is not None:
                block.parent = parent
                parent.num_children += 1

    def free(self, table: list[int]) -> None:
        """Drop one reference on every block of ``table`` (tail first) and clear it."""
        self._tick += 1
        blocks = self.blocks
        for block_id in reversed(table):
            block = blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.num_used -= 1
                block.last_used = self._tick
                if block.key is not None:
                    self.evictable.add(block)
                else:
                    self.free_ids.append(block_id)
        table.clear()

    # ------------------------------------------------------------------ swap
    def can_swap_out(self, table: list[int]) -> bool:
        return len(table) <= len(self.free_cpu_ids)

    def swap_out(self, table: list[int]) -> list[tuple[int, int]]:
        """Move a table's contents to host blocks; ``table`` then lists host ids.

        Returns:
            (device block, host block) copies to perform.
        """
        if not self.can_swap_out(table):
            raise RuntimeError(f"{len(table)} host blocks needed, {len(self.free_cpu_ids)} free")
        pairs = [(gpu, self.free_cpu_ids.pop()) for gpu in table]
        self.free(table)
        table.extend(cpu for _, cpu in pairs)
        return pairs

    def swap_in(self, table: list[int]) -> list[tuple[int, int]] | None:
        """Move a swapped table back to fresh device blocks; ``table`` then lists device ids.

        Returns:
            (host block, device block) copies, or None (nothing changed) if the
            device has too few blocks.
        """
        cpu_ids = list(table)
        table.clear()
        if not self.allocate(table, len(cpu_ids) * self.block_size):
            table.extend(cpu_ids)
            return None
        self.free_cpu_ids.extend(reversed(cpu_ids))
        return list(zip(cpu_ids, table, strict=True))

    def free_host(self, table: list[int]) -> None:
        """Release the host blocks of a swapped table (its sequence is dropped)."""
        self.free_cpu_ids.extend(reversed(table))
        table.clear()

    # ------------------------------------------------------------ invariants
    def check_invariants(self, tables: Iterable[list[int]] = ()) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent.

        Args:
            tables: every live device block table, to check reference counts.
        """
        free = set(self.free_ids) | set(range(len(self.blocks), self.num_blocks))
        assert len(self.free_ids) == len(set(self.free_ids)), "block twice in the free list"
        assert all(i < len(self.blocks) for i in self.free_ids), "fresh block in the free list"
        refs = [0] * self.num_blocks
        for table in tables:
            for block_id in table:
                refs[block_id] += 1
        assert not any(refs[len(self.blocks):]), "a table holds a block that was never allocated"
        used = 0
        for block in self.blocks:
            assert self.blocks[block.block_id] is block, f"{block} is out of place"
            assert block.ref_count >= 0, f"{block} has a negative reference count"
            assert block.ref_count == refs[block.block_id], f"{block}: {refs[block.block_id]} tables hold it"
            in_free = block.block_id in free
            assert not (in_free and block.ref_count), f"{block} is both free and used"
            assert not (in_free and block.key is not None), f"{block} is free but cached"
            if block.ref_count:
                used += 1
            elif not in_free:
                assert block.key is not None, f"{block} is neither free, cached nor used"
            if block.key is not None:
                assert self.cache.get(block.key) is block, f"{block} is not under its key"
        assert used == self.num_used, "used-block count drifted"
        pooled = self.num_blocks - used - len(free)
        assert pooled == len(self.evictable), "evictable pool size drifted"
        assert len(self.cache) == sum(b.key is not None for b in self.blocks), "stale cache entries"
        assert self.num_free_blocks == len(free) + len(self.evictable), "free-block count drifted"
