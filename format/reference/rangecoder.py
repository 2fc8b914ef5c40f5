"""Range coder of the .vqc payloads, written from format/SPEC.md ("Range coder").

Python integers (NumPy only to build the cumulative table).  `cdf_from_pmf` turns a PMF of
total 2**20 into the coder's 24-bit cumulative table, `RangeDecoder` decodes and checks that a
payload is conforming, `RangeEncoder` writes the canonical payload (used by the tests to show
that the specified coder is the one every released file was written with).
"""

from __future__ import annotations

import numpy as np

PMF_TOTAL_BITS = 20  # a PMF from the prior sums to 2**20
PRECISION = 24  # the coder's probabilities sum to 2**24
STATE_BITS = 64
WORD_BITS = 32
STATE_MASK = (1 << STATE_BITS) - 1
WORD_MASK = (1 << WORD_BITS) - 1
RENORM_BELOW = 1 << (STATE_BITS - WORD_BITS)  # range < 2**32 triggers a renormalisation


class PayloadError(ValueError):
    """A payload is not a conforming range-coder stream (SPEC.md, "Conforming payloads")."""


def cdf_from_pmf(pmf) -> list[int]:
    """PMF (K >= 2 integers >= 1 summing to 2**20) -> K + 1 cumulative values, 0 .. 2**24.

    left_k = floor(C_k * (2**24 - K) / 2**20) + k with C_k = p_0 + ... + p_(k-1); the last
    entry is 2**24.  Every symbol gets at least 1 of the 2**24.  (C_k * (2**24 - K) < 2**44.)
    """
    p = np.asarray(pmf, dtype=np.int64)
    k_count = len(p)
    c = np.concatenate([[0], np.cumsum(p)[:-1]])
    left = ((c * ((1 << PRECISION) - k_count)) >> PMF_TOTAL_BITS) + np.arange(k_count)
    return left.tolist() + [1 << PRECISION]


class RangeEncoder:
    """Encoder: `encode(left, freq)` per symbol, then `finish()` -> list of 32-bit words."""

    def __init__(self) -> None:
        self.low = 0  # 64-bit
        self.range = STATE_MASK  # 2**64 - 1
        self.words: list[int] = []

    def _add_to_low(self, amount: int) -> None:
        """low += amount; a carry out of 64 bits is added to the words already written."""
        self.low += amount
        if self.low > STATE_MASK:
            self.low &= STATE_MASK
            i = len(self.words) - 1
            while self.words[i] == WORD_MASK:  # carry ripples through all-ones words
                self.words[i] = 0
                i -= 1
            self.words[i] += 1

    def encode(self, left: int, freq: int) -> None:
        """Code one symbol whose interval is [left, left + freq) out of 2**24."""
        scale = self.range >> PRECISION
        self._add_to_low(scale * left)
        self.range = scale * freq
        if self.range < RENORM_BELOW:
            self.words.append(self.low >> WORD_BITS)
            self.low = (self.low << WORD_BITS) & STATE_MASK
            self.range <<= WORD_BITS

    def finish(self) -> list[int]:
        """The payload words: nothing if no symbol was coded; else the top word of
        low + 2**32 - 1, and a zero word if that equals the top word of low + range."""
        if self.range == STATE_MASK:
            return list(self.words)
        upper_word = ((self.low + self.range) & STATE_MASK) >> WORD_BITS
        self._add_to_low(WORD_MASK)
        point_word = self.low >> WORD_BITS
        self.words.append(point_word)
        if upper_word == point_word:
            self.words.append(0)
        return self.words


class RangeDecoder:
    """Decoder over a payload of n 32-bit words.  It reads 2 words to start and 1 more at each
    renormalisation; a word read at index n (one past the end) is 0.  PayloadError as soon as it
    would read a word at index n + 1 or more, or when the payload leaves the coding interval;
    `finish()` checks that every word was read."""

    def __init__(self, words: list[int]) -> None:
        self.words = words
        self.pos = 0  # words read so far (may reach len(words) + 1: one implicit zero word)
        self.low = 0
        self.range = STATE_MASK
        self.point = (self._next_word() << WORD_BITS) | self._next_word()

    def _next_word(self) -> int:
        if self.pos > len(self.words):
            raise PayloadError(f"its {len(self.words)} words end before the tile's indices do")
        word = self.words[self.pos] if self.pos < len(self.words) else 0
        self.pos += 1
        return word

    def decode(self, cdf: list[int]) -> int:
        """Decode one symbol with the cumulative table `cdf` (from `cdf_from_pmf`)."""
        scale = self.range >> PRECISION
        quantile = ((self.point - self.low) & STATE_MASK) // scale
        if quantile >= 1 << PRECISION:
            raise PayloadError("its value lies outside the coding interval")
        lo, hi = 0, len(cdf) - 2  # largest k with cdf[k] <= quantile
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cdf[mid] <= quantile:
                lo = mid
            else:
                hi = mid - 1
        k = lo
        self.low = (self.low + scale * cdf[k]) & STATE_MASK
        self.range = scale * (cdf[k + 1] - cdf[k])
        if self.range < RENORM_BELOW:
            self.low = (self.low << WORD_BITS) & STATE_MASK
            self.range <<= WORD_BITS
            self.point = ((self.point << WORD_BITS) & STATE_MASK) | self._next_word()
        return k

    def finish(self) -> None:
        """After the tile's last symbol every stored word must have been read."""
        if self.pos < len(self.words):
            raise PayloadError(f"{len(self.words) - self.pos} of its {len(self.words)} words "
                               "are left over after the tile's last index")
