"""A stream is refused RECOGNIZER_UNAVAILABLE only when the model stays unready: one slow or failed
readiness answer is asked again (a fresh CI run refused the parity test's first stream after a
cold start, with the model serving)."""

from __future__ import annotations

from services.speech.recognition import ReadinessCache


class Answers:
    """A Triton client whose readiness answers are scripted (the last one repeats)."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def is_model_ready(self, model: str) -> bool:
        self.asked += 1
        return self.answers[min(self.asked, len(self.answers)) - 1]


async def test_one_failed_answer_is_asked_again() -> None:
    triton = Answers(False, True)
    assert await ReadinessCache(triton, "speech_recognition", grace=2.0).ready()  # type: ignore[arg-type]
    assert triton.asked == 2


async def test_a_model_that_stays_unready_is_refused_after_the_grace() -> None:
    triton = Answers(False)
    cache = ReadinessCache(triton, "speech_recognition", grace=0.6)  # type: ignore[arg-type]
    assert not await cache.ready()
    assert triton.asked >= 2


async def test_a_ready_answer_is_kept_for_its_ttl() -> None:
    triton = Answers(True, False)
    cache = ReadinessCache(triton, "speech_recognition", ttl=60.0)  # type: ignore[arg-type]
    assert await cache.ready() and await cache.ready()
    assert triton.asked == 1
