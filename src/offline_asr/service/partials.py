"""Text deltas while a turn is still going, from repeated transcriptions of its audio so far.

A hypothesis of a growing turn changes at its end as more audio comes in, so only the words
that two consecutive hypotheses agree on are sent (local agreement, as WhisperLive and
whisper_streaming do). Deltas only ever append: their sum is a prefix of the last agreed text.
The turn's final text comes from the whole turn; when it starts with what was sent, the rest
follows as a last delta, so the deltas add up to the final text.
"""

from __future__ import annotations


class PartialText:
    """What has been sent for one turn, and the hypothesis before the latest one."""

    def __init__(self) -> None:
        self.sent = ""
        self._previous: list[str] = []

    def hypothesis(self, text: str) -> str:
        """The delta to send for a new hypothesis ("" when nothing new is agreed)."""
        words = text.split()
        agreed: list[str] = []
        for before, now in zip(self._previous, words, strict=False):
            if before != now:
                break
            agreed.append(now)
        self._previous = words
        return self._extend(" ".join(agreed))

    def final(self, text: str) -> str:
        """The last delta before the final text ("" when the sent text is not its start)."""
        return self._extend(text)

    def _extend(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        if self.sent and not text[len(self.sent)].isspace():
            return ""  # "The" sent, "Theory" now: a word changed, nothing is appended
        delta = text[len(self.sent) :]
        self.sent = text
        return delta
