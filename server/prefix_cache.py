"""Prefix reuse for editors: an editor sends nearly the same 1-2k tokens of context on every
pause in typing, so the keys and values of a prompt's start are kept and the next prompt that
starts the same way prefills only what follows.

KV depends on the mask, so each mask (by its content digest: a reload that changes a language's
mask never hits the old one's keys) has a tree of its own. Prompts are cut into blocks of BLOCK
tokens; a node of the tree is one block, under the block before it (a radix tree with a fixed
stride, as vLLM's and SGLang's prefix caches are), so prompts that share a start share its
blocks. A prompt's tail shorter than a block is a leaf of its own, and a lookup follows a leaf
token by token: an editor's prompt that extends the last one by a few tokens prefills only
those. The blocks live in one pool of keys and values sized by the budget and allocated once
(a fresh 18 MB copy per prompt cost 60-85 ms of page faults on AMD EPYC once a few were held,
more than three decode steps); leaves are evicted least recently used first when it is full.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

BLOCK = 16  # tokens per block


@dataclass(eq=False)
class Node:
    ids: tuple[int, ...]  # this block's tokens: BLOCK, or fewer for a prompt's tail (a leaf)
    start: int  # tokens before it
    block: int  # its place in the pool (-1: a mask's root, which holds no tokens)
    parent: Node | None = None
    children: dict[tuple[int, ...], Node] = field(default_factory=dict)


class PrefixCache:
    def __init__(self, budget_bytes: int, layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype) -> None:
        shape = (layers, kv_heads, BLOCK, head_dim)
        self.block_bytes = 2 * torch.Size(shape).numel() * dtype.itemsize
        blocks = budget_bytes // self.block_bytes
        # empty: a page costs memory once a block is first written, then it is reused
        self.k = torch.empty(layers, kv_heads, blocks * BLOCK, head_dim, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.free = list(range(blocks - 1, -1, -1))  # pop() takes the lowest: runs stay whole
        self.roots: dict[str, Node] = {}
        self.recent: OrderedDict[Node, None] = OrderedDict()  # every block, least recent first

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks in use."""
        return len(self.recent) * self.block_bytes

    def restore(self, mask_id: str, ids: list[int], k: torch.Tensor, v: torch.Tensor) -> int:
        """Copy the keys and values of the longest cached prefix of `ids` into k, v (a slot's
        [layers, kv_heads, >= len(ids), head_dim]), leaving at least one token to prefill (its
        logits start the generation); the prefix's length."""
        path = self._walk(self.roots.get(mask_id), ids[:-1])
        self._touch([node for node, _ in path])
        self._copy([(node.block, node.start, used) for node, used in path], k, v, into_pool=False)
        return sum(used for _, used in path)

    def store(self, mask_id: str, ids: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the keys and values of `ids` (k, v: a slot's views as in `restore`), adding
        only the blocks that are not held yet."""
        node = self.roots.setdefault(mask_id, Node((), 0, -1))
        path: list[Node] = []
        added: list[tuple[int, int, int]] = []
        for start in range(0, len(ids), BLOCK):
            key = tuple(ids[start:start + BLOCK])
            child = node.children.get(key) or self._longer_tail(node, key)
            if child is None:
                for sibling in [c for c in node.children.values() if key[:len(c.ids)] == c.ids]:
                    self._drop(sibling)  # a shorter tail of this block: superseded
                child = self._add(node, key, start, path)
                if child is None:  # the pool holds nothing else to evict
                    break
                added.append((child.block, start, len(key)))
            path.append(child)
            node = child
        self._copy(added, k, v, into_pool=True)
        self._touch(path)

    def _walk(self, root: Node | None, ids: list[int]) -> list[tuple[Node, int]]:
        """(node, tokens of it used) along the longest cached prefix of `ids`."""
        path: list[tuple[Node, int]] = []
        node, start = root, 0
        while node is not None and start < len(ids):
            key = tuple(ids[start:start + BLOCK])
            child = node.children.get(key) if len(key) == BLOCK else None
            if child is not None:
                path.append((child, BLOCK))
                node, start = child, start + BLOCK
                continue
            best, used = None, 0  # a block that starts like the rest: follow it token by token
            for candidate in node.children.values():
                common = _common_length(candidate.ids, key)
                if common > used:
                    best, used = candidate, common
            if best is not None:
                path.append((best, used))
            break
        return path

    def _longer_tail(self, parent: Node, key: tuple[int, ...]) -> Node | None:
        """A tail under `parent` that holds all of `key` (a prompt's shorter tail) and more."""
        if len(key) == BLOCK:
            return None
        return next((c for c in parent.children.values() if c.ids[:len(key)] == key), None)

    def _add(self, parent: Node, key: tuple[int, ...], start: int,
             keep: list[Node]) -> Node | None:
        """A new block under `parent`, evicting the least recently used leaf for it if the
        pool is full (never `parent` or the blocks above it)."""
        if not self.free and not self._evict(set(keep) | {parent}):
            return None
        child = Node(key, start, self.free.pop(), parent)
        parent.children[key] = child
        self.recent[child] = None
        return child

    def _evict(self, keep: set[Node]) -> bool:
        leaf = next((n for n in self.recent if not n.children and n not in keep), None)
        if leaf is None:
            return False
        self._drop(leaf)
        return True

    def _drop(self, leaf: Node) -> None:
        del leaf.parent.children[leaf.ids]
        del self.recent[leaf]
        self.free.append(leaf.block)

    def _touch(self, path: list[Node]) -> None:
        """Mark `path` (root side first) most recently used, each block more recent than the
        blocks under it, so the least recent block is always a leaf."""
        for node in reversed(path):
            self.recent.move_to_end(node)

    def _copy(self, blocks: list[tuple[int, int, int]], k: torch.Tensor, v: torch.Tensor,
              into_pool: bool) -> None:
        """Copy (pool block, first token, tokens) between the pool and k, v; blocks that lie
        next to each other in both go in one copy."""
        runs: list[list[int]] = []  # [pool token, sequence token, tokens]
        for block, start, tokens in blocks:
            last = runs[-1] if runs else None
            if (last and last[2] % BLOCK == 0 and last[0] + last[2] == block * BLOCK
                    and last[1] + last[2] == start):
                last[2] += tokens
            else:
                runs.append([block * BLOCK, start, tokens])
        for pool_at, at, tokens in runs:
            for pool, seq in ((self.k, k), (self.v, v)):
                if into_pool:
                    pool[:, :, pool_at:pool_at + tokens] = seq[:, :, at:at + tokens]
                else:
                    seq[:, :, at:at + tokens] = pool[:, :, pool_at:pool_at + tokens]


def _common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
