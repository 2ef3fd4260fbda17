"""Guardrails: PII redaction (e-mail addresses, phone and payment-card numbers) and blocklists,
on the prompt before it reaches a model and on the output before it is sent.

Output is filtered as it streams without ever retracting sent text: the filter holds back the
last, possibly incomplete word (and a trailing run of number groups, and any tail that could
still grow into a stop sequence or blocked phrase) and only releases text that can no longer become
part of a match.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

REDACTION, BLOCK = "redaction", "block"
INPUT, OUTPUT = "input", "output"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\w)"
)
# Every PII pattern needs an '@' (e-mail) or a digit (phone, card): text without either, most
# of a chat's pieces, is not scanned by the three patterns (this runs on each streamed piece).
_MAYBE_PII = re.compile(r"[@\d]")
# A trailing run of number groups (phone and card numbers continue across spaces).
_TRAILING_NUMBER = re.compile(r"[\d+(][\d\s().+-]*$")
_REASONS = {
    "pii.email": "e-mail address removed",
    "pii.phone": "phone number removed",
    "pii.card": "payment card number removed",
}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _pii_spans(text: str) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    if not _MAYBE_PII.search(text):
        return spans

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e, _ in spans)

    for m in _EMAIL.finditer(text):
        spans.append((m.start(), m.end(), "pii.email"))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _luhn(digits) and free(m.start(), m.end()):
            spans.append((m.start(), m.end(), "pii.card"))
    for m in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        # 7-15 digits (E.164) with a separator or a leading +; bare numbers are left alone.
        if (
            7 <= len(digits) <= 15
            and re.search(r"[ .()+-]", m.group())
            and free(m.start(), m.end())
        ):
            spans.append((m.start(), m.end(), "pii.phone"))
    return sorted(spans)


@dataclass(frozen=True)
class Action:
    kind: str  # REDACTION | BLOCK
    stage: str  # INPUT | OUTPUT
    category: str
    reason: str
    count: int


@dataclass
class Guardrails:
    blocklist: tuple[str, ...] = ()
    # Each blocklisted term as a whole-word pattern, compiled once (checked on every piece).
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._patterns = tuple(
            re.compile(rf"(?<!\w){re.escape(term)}(?!\w)") for term in self.blocklist
        )

    @classmethod
    def from_setting(cls, value: str) -> Guardrails:
        return cls(tuple(t.strip().lower() for t in value.split(",") if t.strip()))

    def redact(self, text: str, counts: Counter[str]) -> str:
        out, last = [], 0
        for start, end, category in _pii_spans(text):
            out.append(text[last:start])
            out.append(f"[REDACTED:{category.split('.')[1]}]")
            counts[category] += 1
            last = end
        out.append(text[last:])
        return "".join(out)

    def blocked_term(self, text: str) -> tuple[int, str] | None:
        """(position, term) of the first blocklisted term in `text`, whole words, any case."""
        best: tuple[int, str] | None = None
        low = text.lower()
        for term, pattern in zip(self.blocklist, self._patterns):
            m = pattern.search(low)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), term)
        return best

    def check_input(self, contents: Iterable[str]) -> tuple[list[str], list[Action]]:
        """Redacted contents and the actions taken; a BLOCK action means: do not call a model."""
        counts: Counter[str] = Counter()
        redacted = []
        for content in contents:
            hit = self.blocked_term(content)
            if hit is not None:
                return [], [
                    Action(
                        BLOCK,
                        INPUT,
                        "blocklist",
                        f"the prompt contains the blocked term {hit[1]!r}",
                        1,
                    )
                ]
            redacted.append(self.redact(content, counts))
        return redacted, _redactions(counts, INPUT)

    def output_filter(self, stop: Iterable[str] = ()) -> OutputFilter:
        return OutputFilter(self, tuple(s for s in stop if s))


def _redactions(counts: Counter[str], stage: str) -> list[Action]:
    return [Action(REDACTION, stage, c, _REASONS[c], n) for c, n in sorted(counts.items())]


@dataclass
class OutputFilter:
    """Streaming output stage: feed pieces, get releasable text; also ends at stop sequences."""

    rails: Guardrails
    stop: tuple[str, ...]
    buffer: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    blocked: Action | None = None
    stopped: bool = False

    @property
    def done(self) -> bool:
        return self.blocked is not None or self.stopped

    def feed(self, text: str) -> str:
        if self.done:
            return ""
        self.buffer += text
        end = self._terminal_cut()
        if end is not None:
            released, self.buffer = self.buffer[:end], ""
            return self.rails.redact(released, self.counts)
        cut = self._safe_cut()
        if cut <= 0:
            return ""
        released, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return self.rails.redact(released, self.counts)

    def _safe_cut(self) -> int:
        """How much of the buffer can be released: whole words only, never part of what could
        still become a PII match, a stop sequence or a blocked phrase."""
        buf = self.buffer
        cut = buf.rfind(" ")  # the last word may be incomplete (e-mail addresses have no spaces)
        if cut <= 0:
            return 0
        # Phone and card numbers continue across spaces: keep a trailing run of number groups.
        number = _TRAILING_NUMBER.search(buf[:cut])
        if number:
            cut = number.start()
        cut = min(cut, len(buf) - self._partial_match(buf))
        for start, end, _ in _pii_spans(buf):
            if start < cut < end:
                cut = start
        return cut

    def _partial_match(self, buf: str) -> int:
        """Length of the longest buffer suffix that could still grow into a stop sequence
        (case-sensitive) or a blocked phrase (any case)."""
        low = buf.lower()
        longest = 0
        for term, text in [(s, buf) for s in self.stop] + [(t, low) for t in self.rails.blocklist]:
            for k in range(min(len(term), len(text)), longest, -1):
                if text.endswith(term[:k]):
                    longest = k
                    break
        return longest

    def flush(self) -> str:
        if self.done:
            return ""
        end = self._terminal_cut()
        released = self.buffer[:end] if end is not None else self.buffer
        self.buffer = ""
        return self.rails.redact(released, self.counts)

    def _terminal_cut(self) -> int | None:
        """Where output must end (blocked term or stop sequence) within the buffer, if anywhere."""
        cuts: list[int] = []
        hit = self.rails.blocked_term(self.buffer)
        if hit is not None:
            cuts.append(hit[0])
        stop_at = [self.buffer.find(s) for s in self.stop if s in self.buffer]
        if stop_at:
            cuts.append(min(stop_at))
        if not cuts:
            return None
        end = min(cuts)
        if hit is not None and hit[0] == end:
            self.blocked = Action(
                BLOCK, OUTPUT, "blocklist", f"the answer contained the blocked term {hit[1]!r}", 1
            )
        else:
            self.stopped = True
        return end

    def actions(self) -> list[Action]:
        out = _redactions(self.counts, OUTPUT)
        return out + ([self.blocked] if self.blocked else [])
