"""Prefix reuse for editors: an editor sends nearly the same 1-2k tokens of context on every
pause in typing, so the keys and values of a prompt's start are kept and the next prompt that
starts the same way prefills only what follows.

KV depends on the mask, so entries are per mask (by its content digest: a reload that changes
a language's mask never hits the old one's entries). Prompts are cut into blocks of BLOCK
tokens and each block is named by a hash chained over every block before it (as vLLM's prefix
caching does), so a lookup walks the new prompt's chain and stops at the first unknown block,
then follows the entry that holds the last known block token by token: an editor's prompt that
extends the last one by a few tokens prefills only those. An entry holds the KV of one prompt;
entries are evicted least recently used first once their bytes pass the budget.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK = 16  # tokens per hashed block


@dataclass
class Entry:
    k: torch.Tensor  # [layers, kv_heads, tokens, head_dim]
    v: torch.Tensor
    ids: list[int]  # the tokens whose keys and values it holds
    hashes: list[bytes]  # its whole blocks' chained hashes, in order

    @property
    def tokens(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def block_hashes(mask_id: str, ids: list[int]) -> list[bytes]:
    """The chained hash of every whole block of `ids` under mask `mask_id`."""
    hashes, previous = [], mask_id.encode()
    for start in range(0, len(ids) - BLOCK + 1, BLOCK):
        block = ",".join(map(str, ids[start:start + BLOCK])).encode()
        previous = hashlib.blake2b(previous + b"|" + block, digest_size=16).digest()
        hashes.append(previous)
    return hashes


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self.blocks: dict[bytes, tuple[int, int]] = {}  # block hash -> (entry id, its tokens)
        self.nbytes = 0
        self._next_id = 0

    def lookup(self, mask_id: str, ids: list[int]) -> tuple[Entry | None, int]:
        """The entry holding the longest cached prefix of `ids` and that prefix's length,
        leaving at least one token to prefill (its logits start the generation)."""
        found, length = self._longest(block_hashes(mask_id, ids[:-1]), ids[:-1])
        if found is None:
            return None, 0
        self.entries.move_to_end(found)
        return self.entries[found], length

    def _longest(self, hashes: list[bytes], ids: list[int]) -> tuple[int | None, int]:
        """(entry id, length) of the longest cached prefix of `ids` (whose block hashes are
        `hashes`): whole blocks along the hash chain, then token by token along the entry
        holding the last of them."""
        found, length = None, 0
        for h in hashes:
            hit = self.blocks.get(h)
            if hit is None:
                break
            found, length = hit
        if found is not None:
            held = self.entries[found].ids
            end = min(len(held), len(ids))
            while length < end and held[length] == ids[length]:
                length += 1
        return found, length

    def store(self, mask_id: str, ids: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the KV of `ids` (unless an entry holds all of them already, or they are
        shorter than a block); k, v: [layers, kv_heads, >= len(ids), head_dim] views of a
        sequence's cache slot (copied here)."""
        hashes = block_hashes(mask_id, ids)
        if not hashes or self._longest(hashes, ids)[1] == len(ids):
            return
        tokens = len(ids)
        entry = Entry(k[:, :, :tokens].clone(), v[:, :, :tokens].clone(), list(ids), hashes)
        if entry.nbytes > self.budget:
            return
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self.entries[entry_id] = entry
        self.nbytes += entry.nbytes
        for i, h in enumerate(hashes):
            self.blocks[h] = (entry_id, (i + 1) * BLOCK)
        while self.nbytes > self.budget:
            self._evict()

    def _evict(self) -> None:
        entry_id, entry = self.entries.popitem(last=False)
        self.nbytes -= entry.nbytes
        for h in entry.hashes:
            if self.blocks.get(h, (None,))[0] == entry_id:
                del self.blocks[h]
