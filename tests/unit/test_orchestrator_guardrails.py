"""Guardrails (PII redaction, blocklists, streaming output filter), token counting and the
model catalog — plain logic, no services."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from services.common.config import ConfigError, Settings
from services.common.errors import ServiceError
from services.orchestrator.catalog import Catalog, parse_catalog
from services.orchestrator.guardrails import BLOCK, REDACTION, Guardrails
from services.orchestrator.tokens import count_messages, count_text

RAILS = Guardrails.from_setting("forbidden, top secret")


@pytest.mark.parametrize(
    "text,expected,category",
    [
        ("write to jane.doe+ai@mail.example.co.uk today", "write to [REDACTED:email] today", "pii.email"),
        ("call +44 20 7946 0958 now", "call [REDACTED:phone] now", "pii.phone"),
        ("call (415) 555-2671 now", "call [REDACTED:phone] now", "pii.phone"),
        ("card 4111 1111 1111 1111 ok", "card [REDACTED:card] ok", "pii.card"),
        ("card 5500-0000-0000-0004 ok", "card [REDACTED:card] ok", "pii.card"),
    ],
)
def test_redacts_pii(text: str, expected: str, category: str) -> None:
    redacted, actions = RAILS.check_input([text])
    assert redacted == [expected]
    assert [(a.kind, a.category, a.count) for a in actions] == [(REDACTION, category, 1)]


@pytest.mark.parametrize("text", ["built in 1889", "order 12345", "card 4111 1111 1111 1112 (bad Luhn)",
                                  "version 3.11.7", "between ten and noon"])
def test_leaves_ordinary_text_alone(text: str) -> None:
    assert RAILS.check_input([text]) == ([text], [])


def test_blocklist_blocks_input_with_reason() -> None:
    redacted, actions = RAILS.check_input(["fine", "this is TOP  secret? no: top secret!"])
    assert redacted == [] and actions[0].kind == BLOCK and "top secret" in actions[0].reason
    assert RAILS.check_input(["unforbiddenly"])[1] == []  # whole words only


def _stream(pieces: list[str], stop: tuple[str, ...] = ()) -> tuple[str, object]:
    out = RAILS.output_filter(stop)
    text = "".join(out.feed(p) for p in pieces) + out.flush()
    return text, out


def test_output_filter_catches_pii_split_across_pieces() -> None:
    text, out = _stream(["Mail ", "bob", "@", "exam", "ple.com", " or ", "+1 415", " 555 ", "2671", " ok."])
    assert text == "Mail [REDACTED:email] or [REDACTED:phone] ok."
    assert {a.category for a in out.actions()} == {"pii.email", "pii.phone"}  # type: ignore[attr-defined]


def test_output_filter_never_retracts_and_releases_whole_words_early() -> None:
    out = RAILS.output_filter()
    released = [out.feed(p) for p in ["The ", "sky ", "is ", "blue."]]
    assert released[:3] == ["The", " sky", " is"]  # each word as soon as the next one starts
    assert "".join(released) + out.flush() == "The sky is blue."


def test_output_filter_blocks_and_stops() -> None:
    text, out = _stream(["It is ", "top ", "secret ", "material"])
    assert text == "It is " and out.blocked is not None  # type: ignore[attr-defined]
    text, out = _stream(["one two", " END three"], stop=("END",))
    assert text == "one two " and out.stopped  # type: ignore[attr-defined]


def test_token_counts_are_deterministic_and_grow_with_text() -> None:
    assert count_text("") == 0
    assert count_text("hello, world") == count_text("hello, world")
    assert count_text("internationalization") > count_text("cat")
    assert count_messages([("user", "hi")]) == count_text("hi") + 4 + 3


def test_catalog_validation_and_not_found_lists_models(tmp_path: Path) -> None:
    settings = Settings.from_env({})
    catalog = Catalog.load(settings)
    assert catalog.names() == ["models/grounded-extractive-v1"]  # hosted models need keys
    with pytest.raises(ServiceError) as caught:
        catalog.get("models/gpt-4o-mini")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and "models/grounded-extractive-v1" in caught.value.message
    with pytest.raises(ServiceError) as caught:
        catalog.get("gpt")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    keyed = Catalog.load(Settings.from_env({"AIMESH_OPENAI_API_KEY": "sk"}))
    chain = keyed.chain(keyed.get("models/gpt-4o-mini"))
    assert [m.name for m in chain] == ["models/gpt-4o-mini", "models/grounded-extractive-v1"]
    with pytest.raises(ConfigError, match="provider"):
        parse_catalog({"models": [{"name": "x", "context_window_tokens": 10, "max_output_tokens": 5,
                                   "deployments": [{"provider": "nope", "deployment": "d"}]}]})
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps({"models": [{"name": "Bad Name"}]}))
    with pytest.raises(ConfigError, match="name"):
        Catalog.load(settings, str(bad))
