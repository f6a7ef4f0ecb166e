"""Texts the tests rank: the mxbai model card's example and varied generated pairs."""

from __future__ import annotations

import random

MOCKINGBIRD_QUERY = "Who wrote 'To Kill a Mockingbird'?"
MOCKINGBIRD_DOCUMENTS = [
    "'To Kill a Mockingbird' is a novel by Harper Lee published in 1960. It was immediately "
    "successful, winning the Pulitzer Prize, and has become a classic of modern American "
    "literature.",
    "The novel 'Moby-Dick' was written by Herman Melville and first published in 1851. It is "
    "considered a masterpiece of American literature and deals with complex themes of "
    "obsession, revenge, and the conflict between good and evil.",
    "Harper Lee, an American novelist widely known for her novel 'To Kill a Mockingbird', was "
    "born in 1926 in Monroeville, Alabama. She received the Pulitzer Prize for Fiction in 1961.",
    "Jane Austen was an English novelist known primarily for her six major novels, which "
    "interpret, critique and comment upon the British landed gentry at the end of the 18th "
    "century.",
    "The 'Harry Potter' series, which consists of seven fantasy novels written by British author "
    "J.K. Rowling, is among the most popular and critically acclaimed books of the modern era.",
    "'The Great Gatsby', a novel written by American author F. Scott Fitzgerald, was published in "
    "1925. The story is set in the Jazz Age and follows the life of millionaire Jay Gatsby and "
    "his pursuit of Daisy Buchanan.",
]

_SENTENCES = [sentence for document in MOCKINGBIRD_DOCUMENTS for sentence in document.split(". ")]
_EXTRA = [
    "The Nile is the longest river in Africa, flowing north for about 6,650 kilometres.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Café au lait, naïve façades and Zürich's Straße test accents and non-ASCII text.",
    "東京は日本の首都です。",
    "Rust's borrow checker enforces memory safety without a garbage collector.",
    "In 1969, Apollo 11 landed the first humans on the Moon.",
]


def varied_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Deterministic (query, document) pairs: short, medium and over-long documents, and a
    few long queries, so truncation of both sides is exercised."""
    rng = random.Random(seed)
    pool = _SENTENCES + _EXTRA
    pairs = []
    for n in range(count):
        query = rng.choice(pool) if n % 7 else " ".join(rng.choices(pool, k=40))
        size = (1, 3, 8, 60)[n % 4]  # the last: far past 512 tokens
        document = " ".join(rng.choices(pool, k=size))
        pairs.append((query, document))
    return pairs
