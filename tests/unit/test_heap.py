"""After a run the encoder gives the heap's freed pages back to the system when they are
many: resident memory falls to what the process still uses."""

from __future__ import annotations

from reranker.backend.heap import HeapTrimmer, resident_bytes


def test_freed_heap_memory_goes_back_after_a_trim() -> None:
    trim = HeapTrimmer(threshold=16 << 20)
    assert not trim()
    # Many small blocks (below the mmap threshold) and one after them that stays: freed,
    # the others stay resident in the heap, below the top the last one pins.
    blocks = [bytearray(64 << 10) for _ in range(1000)]
    kept = bytearray(64 << 10)
    holding = resident_bytes()
    del blocks
    assert resident_bytes() >= holding - (8 << 20), "glibc gave the blocks back by itself"
    assert trim()
    assert resident_bytes() <= holding - (48 << 20)
    assert not trim(), "nothing more to give back"
    assert len(kept) == 64 << 10
