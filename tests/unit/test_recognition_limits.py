"""The recognizer stream's own idle limit must not cut a final short: while a session waits for
an utterance's final it sends nothing, so on an overloaded Triton the idle limit (which closes
the stream) has to outlast the final's own limit. With 40 s against 60 s, 3 of 12 streams bursting
the same audio beside two spinning processes failed "no audio for 40s"; with the limits in this
order all 12 answered, with the same words."""

from services.speech.recognition import FINAL_TIMEOUT_SECONDS, IDLE_TIMEOUT_SECONDS


def test_the_stream_outlasts_the_wait_for_a_final() -> None:
    assert IDLE_TIMEOUT_SECONDS > FINAL_TIMEOUT_SECONDS
