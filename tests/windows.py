"""Where chunking's windows should fall, worked out word by word: the reference the chunker
(``reranker.service.chunking.plan_windows``, which works token by token) is checked against."""

from __future__ import annotations

from collections.abc import Sequence


def word_spans(word_ids: Sequence[int | None]) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of each word (a run of tokens with one word id)."""
    spans: list[tuple[int, int]] = []
    for position, word in enumerate(word_ids):
        if spans and word is not None and word == word_ids[position - 1]:
            spans[-1] = (spans[-1][0], position + 1)
        else:
            spans.append((position, position + 1))
    return spans


def reference_windows(
    word_ids: Sequence[int | None], window: int, overlap: int, max_chunks: int
) -> list[tuple[int, int]]:
    """Each window holds as many whole words as fit in ``window`` tokens; the next one starts
    at the first word that begins no more than ``overlap`` tokens before the previous end.
    (Every word must be shorter than a window.)"""
    words = word_spans(word_ids)
    assert all(end - start <= window for start, end in words)
    windows: list[tuple[int, int]] = []
    first = 0
    while len(windows) < max_chunks:
        last = first
        while last < len(words) and words[last][1] - words[first][0] <= window:
            last += 1
        windows.append((words[first][0], words[last - 1][1]))
        if last == len(words):
            break
        end = words[last - 1][1]
        following = first + 1
        while following < last and words[following][0] < end - overlap:
            following += 1
        first = following
    return windows
