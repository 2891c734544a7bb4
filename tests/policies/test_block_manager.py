"""Invariants of the BlockManager under random operation sequences (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from policies.block_manager import BlockManager, chain_keys
from policies.eviction import EVICTION_POLICIES, make_eviction_policy
from policies.types import Request

BS = 4


def keys_of(tokens: tuple[int, ...]) -> list[tuple]:
    req = Request("r", 0.0, len(tokens), 1, prompt_token_ids=tokens)
    return chain_keys(req.block_contents(BS))


class BlockManagerMachine(RuleBasedStateMachine):
    """A shadow model tracks which tokens each block holds; the manager must
    only ever hand out a cached block whose shadow content is the requester's."""

    @initialize(num_blocks=st.integers(4, 24), policy=st.sampled_from(sorted(EVICTION_POLICIES)))
    def setup(self, num_blocks: int, policy: str) -> None:
        self.bm = BlockManager(num_blocks, BS, make_eviction_policy(policy))
        self.live: dict[int, tuple[list[int], tuple[int, ...], list[tuple], int]] = {}
        self.content: dict[int, tuple[int, ...]] = {}  # block id -> tokens written into it
        self.next_id = 0

    @rule(tokens=st.lists(st.integers(0, 2), min_size=1, max_size=18).map(tuple), data=st.data())
    def admit(self, tokens: tuple[int, ...], data: st.DataObject) -> None:
        table: list[int] = []
        keys = keys_of(tokens)
        hit = self.bm.acquire_prefix(table, keys, (len(tokens) - 1) // BS)
        for i in range(hit):  # a hit must hold exactly this prefix's tokens
            assert self.content[table[i]] == tokens[i * BS : (i + 1) * BS]
        computed = hit * BS
        n = data.draw(st.integers(1, len(tokens) - computed))
        if not self.bm.allocate(table, computed + n):
            self.bm.free(table)
            return
        self._compute(table, tokens, computed, computed + n)
        self.bm.commit(table, keys, computed + n)
        self.live[self.next_id] = (table, tokens, keys, computed + n)
        self.next_id += 1

    def _compute(self, table: list[int], tokens: tuple[int, ...], start: int, end: int) -> None:
        for b in range(start // BS, -(-end // BS)):
            block = table[b]
            old = self.content.get(block, ()) if b * BS < start else ()
            self.content[block] = (old + tokens[max(start, b * BS) : min(end, (b + 1) * BS)])[:BS]

    @precondition(lambda self: any(c < len(t) for t, tok, k, c in [(v[0], v[1], v[2], v[3])
                                                                   for v in self.live.values()]))
    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from([s for s, v in self.live.items() if v[3] < len(v[1])]))
        table, tokens, keys, computed = self.live[sid]
        end = data.draw(st.integers(computed + 1, len(tokens)))
        if self.bm.allocate(table, end):
            self._compute(table, tokens, computed, end)
            self.bm.commit(table, keys, end)
            self.live[sid] = (table, tokens, keys, end)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.live)))
        table = self.live.pop(sid)[0]
        self.bm.free(table)
        assert table == []

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "bm"):
            self.bm.check_invariants(v[0] for v in self.live.values())

    def teardown(self) -> None:
        if not hasattr(self, "bm"):
            return
        for table, *_ in self.live.values():
            self.bm.free(table)
        self.bm.check_invariants()
        assert self.bm.num_used == 0
        assert self.bm.num_free_blocks == self.bm.num_blocks  # every block back in the pool


TestBlockManager = BlockManagerMachine.TestCase
TestBlockManager.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_prefix_hit_needs_identical_content() -> None:
    bm = BlockManager(16, BS)
    a = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    ta: list[int] = []
    assert bm.acquire_prefix(ta, keys_of(a), 2) == 0
    assert bm.allocate(ta, len(a))
    bm.commit(ta, keys_of(a), len(a))
    bm.free(ta)
    same_first = (1, 2, 3, 4, 0, 0, 0, 0, 0)
    assert bm.match_prefix(keys_of(same_first)) == 1
    other_first = (9, 2, 3, 4, 5, 6, 7, 8, 9)  # second block equal, but its prefix differs
    assert bm.match_prefix(keys_of(other_first)) == 0
    assert bm.match_prefix(keys_of(a)) == 2


def test_hash_derived_content_matches_equal_hashes_only() -> None:
    r1 = Request("a", 0, 40, 1, block_hashes=(7, 8, 9), hash_block_size=16)
    r2 = Request("b", 0, 40, 1, block_hashes=(7, 8, 5), hash_block_size=16)
    r3 = Request("c", 0, 40, 1, block_hashes=(6, 8, 9), hash_block_size=16)
    k1, k2, k3 = (chain_keys(r.block_contents(8)) for r in (r1, r2, r3))
    assert k1[:4] == k2[:4] and k1[4] != k2[4]
    assert all(x != y for x, y in zip(k1, k3, strict=True))


@pytest.mark.parametrize("policy", sorted(EVICTION_POLICIES))
def test_eviction_reuses_cached_blocks_only_when_free_list_is_empty(policy: str) -> None:
    bm = BlockManager(4, BS, make_eviction_policy(policy))
    t: list[int] = []
    toks = tuple(range(8))
    bm.allocate(t, 8)
    bm.commit(t, keys_of(toks), 8)
    bm.free(t)
    assert bm.num_free_blocks == 4 and len(bm.evictable) == 2
    other: list[int] = []
    assert bm.allocate(other, 8)  # takes the two free blocks, cache intact
    assert bm.match_prefix(keys_of(toks)) == 2
    assert bm.allocate(other, 12)  # must evict one cached block
    assert len(bm.cache) == 1
    assert not bm.allocate(other, 20)  # needs 2 more, only 1 left: nothing changes
    assert len(other) == 3
    bm.check_invariants([other])


@pytest.mark.parametrize(("policy", "root_survives"), [("prefix-lru", True), ("fifo", False)])
def test_prefix_tree_lru_evicts_leaves_before_their_prefix(policy: str, root_survives: bool) -> None:
    bm = BlockManager(6, BS, make_eviction_policy(policy))
    base = tuple(range(4))
    a, b = base + (10, 11, 12, 13), base + (20, 21, 22, 23)
    ta: list[int] = []
    bm.allocate(ta, 8)
    bm.commit(ta, keys_of(a), 8)  # the shared root block is cached first
    tb: list[int] = []
    assert bm.acquire_prefix(tb, keys_of(b), 1) == 1
    bm.allocate(tb, 8)
    bm.commit(tb, keys_of(b), 8)
    bm.free(ta)
    bm.free(tb)
    taken: list[int] = []
    bm.allocate(taken, 4 * 4)  # 3 free blocks + 1 eviction
    assert len(bm.cache) == 2
    assert (bm.match_prefix(keys_of(a)) >= 1) is root_survives
    bm.check_invariants([taken])


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        BlockManager(4, 0)
    with pytest.raises(ValueError, match="num_blocks must be >= 1"):
        BlockManager(0, 16)


def test_swap_round_trip() -> None:
    bm = BlockManager(4, BS, num_cpu_blocks=3)
    t: list[int] = []
    bm.allocate(t, 10)
    gpu = list(t)
    out = bm.swap_out(t)
    assert [g for g, _ in out] == gpu and bm.num_used == 0 and len(t) == 3
    back = bm.swap_in(t)
    assert back is not None and [c for c, _ in back] == [c for _, c in out]
    assert len(bm.free_cpu_ids) == 3
    bm.check_invariants([t])
