"""Benchmark corpora: a labeled retrieval set, and a real corpus (the docstrings of installed
packages: technical prose available offline) for ingestion and search at 10k chunks."""

from __future__ import annotations

import ast
import importlib.util
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


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


# Installed packages whose docstrings make the corpus: real technical prose, present offline on
# every machine after scripts/setup (all are dependencies in pyproject.toml). Versions pin the
# text, so the corpus hash changes when an upgrade changes it.
PACKAGES = ("numpy", "grpc", "google.protobuf", "httpx", "pydantic", "fastapi", "starlette",
            "pypdf", "psycopg", "pymilvus", "markdown_it", "bs4", "jwt", "cryptography",
            "opentelemetry", "prometheus_client", "yoyo", "soundfile", "uvicorn", "torch",
            "transformers")
MIN_DOC_CHARS = 400


@dataclass(frozen=True)
class Document:
    name: str  # e.g. "numpy/lib/_function_base_impl.py"
    text: str


def _docstrings(path: Path) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 80:
                found.append((getattr(node, "name", "module"), doc.strip()))
    return found


def real_documents() -> Iterator[Document]:
    """One plain-text document per module: its docstrings, each under its object's name, in a
    fixed order (packages as listed, files sorted). Lazy: parsing all of them takes minutes."""
    for package in PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.parts or "test" in path.parts:
                continue
            parts = [f"{name}\n{doc}" for name, doc in _docstrings(path)]
            text = "\n\n".join(parts)
            if len(text) >= MIN_DOC_CHARS:
                name = f"{package.replace('.', '/')}/{path.relative_to(root)}"
                yield Document(name, f"{name}\n\n{text}\n")


def corpus_queries(docs: Sequence[Document], count: int, seed: int = 1) -> list[str]:
    """Search queries as a user would type them: the first sentence of a random docstring,
    cut to at most 12 words (real phrasing, not copied chunks)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        doc = rng.choice(docs)
        paragraphs = [p for p in doc.text.split("\n\n")[1:] if "\n" in p]
        if not paragraphs:
            continue
        sentence = rng.choice(paragraphs).split("\n", 1)[1].split(". ")[0]
        words = sentence.split()[:12]
        if len(words) >= 4 and words[0][0].isalpha():
            out.append(" ".join(words))
    return out
