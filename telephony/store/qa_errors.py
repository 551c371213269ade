"""What a QA change can be refused for: shown to the person who tried, never a crash."""

from __future__ import annotations


class QAError(ValueError):
    """A QA change that cannot be made: unknown call, turn, note, tag or scorecard; bad text."""


class NotAllowed(QAError):
    """The change is not this person's to make (another author's note, for staff)."""
