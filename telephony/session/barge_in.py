"""Smart barge-in: caller speech over the bot interrupts it unless it is only a backchannel.

With `barge_in.mode: smart` (telephony/config/barge_in.py), a Flux StartOfTurn while the bot
can be interrupted does not clear at once. The turn's words, as Flux reports them
(StartOfTurn, every Update, EagerEndOfTurn), decide:

- words that are not backchannels (at least `min_words` of them) interrupt at once, as
  `immediate` would have at StartOfTurn;
- at `max_decision_ms` after StartOfTurn: no words yet interrupts (the caller may be saying
  anything); only backchannels, or the start of one ("I" of "I see"), keeps the bot talking;
- after that, later words that are not backchannels still interrupt;
- at EndOfTurn a turn of only backchannels is one: stored as such and never answered.

All of it runs on Flux's events and one timer per turn: nothing per audio frame.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable

from telephony.config.barge_in import DEFAULT_BACKCHANNELS, BargeInConfig
from telephony.session.tasks import TaskSet
from telephony.text_tokens import tokens


class Verdict(enum.Enum):
    EMPTY = "empty"  # no words yet
    BACKCHANNEL = "backchannel"  # only backchannel phrases
    PARTIAL = "partial"  # backchannels, the last one not finished ("I" of "I see")
    SPEECH = "speech"  # words that are not backchannels


class Backchannels:
    """Does a transcript consist of backchannel phrases only?"""

    def __init__(self, phrases: Iterable[str]) -> None:
        self._phrases = {p for p in (tokens(text) for text in phrases) if p}
        self._prefixes = {p[:i] for p in self._phrases for i in range(1, len(p))}
        self._words = {w for p in self._phrases for w in p}
        self._longest = max((len(p) for p in self._phrases), default=0)

    @classmethod
    def for_profile(cls, config: BargeInConfig, languages: Iterable[str] = ("en",)) -> Backchannels:
        if config.backchannels is not None:
            return cls(config.backchannels)
        chosen = {lang.split("-")[0].lower() for lang in languages} & DEFAULT_BACKCHANNELS.keys()
        return cls(p for lang in sorted(chosen or {"en"}) for p in DEFAULT_BACKCHANNELS[lang])

    def verdict(self, text: str) -> Verdict:
        words = tokens(text)
        if not words:
            return Verdict.EMPTY
        n = len(words)
        # whole[i]: words[i:] is a sequence of whole phrases; open_[i]: the same, but the last
        # may be a phrase's beginning. Filled from the end.
        whole = [False] * n + [True]
        open_ = [False] * n + [True]
        for i in range(n - 1, -1, -1):
            for j in range(i + 1, min(n, i + self._longest) + 1):
                piece = words[i:j]
                if piece in self._phrases:
                    whole[i] = whole[i] or whole[j]
                    open_[i] = open_[i] or open_[j]
                elif j == n and piece in self._prefixes:
                    open_[i] = True
        if whole[0]:
            return Verdict.BACKCHANNEL
        return Verdict.PARTIAL if open_[0] else Verdict.SPEECH

    def other_words(self, text: str) -> int:
        """How many words of `text` appear in no backchannel phrase."""
        return sum(1 for w in tokens(text) if w not in self._words)


class _State(enum.Enum):
    IDLE = "idle"  # no turn over the bot being decided
    DECIDING = "deciding"  # before the deadline
    HOLDING = "holding"  # past it: backchannels so far, the bot still talking
    INTERRUPTED = "interrupted"  # this turn cleared the bot


class SmartBargeIn:
    """One call's barge-in decisions. `interrupt(start_ms, why, decided_after_ms)` clears the
    bot if what plays may be interrupted (the engine's barge-in); `bot_speaking()` says
    whether the caller hears the bot now (a backchannel over a greeting that may not be
    interrupted is still one, and still not answered)."""

    def __init__(
        self,
        config: BargeInConfig,
        backchannels: Backchannels,
        tasks: TaskSet,
        interrupt: Callable[[int, str, int], Awaitable[None]],
        bot_speaking: Callable[[], bool],
    ) -> None:
        self.config = config
        self.backchannels = backchannels
        self._interrupt = interrupt
        self._bot_speaking = bot_speaking
        self._timer = tasks.timer("barge-in-decision", self._deadline)
        tasks.at_end(self._release)
        self._state = _State.IDLE
        self._start_ms = 0
        self._started_at = 0.0
        self._text = ""

    @property
    def smart(self) -> bool:
        return self.config.mode == "smart"

    @property
    def holding(self) -> bool:
        """The open turn has been only backchannels so far, over the bot."""
        return self._state in (_State.DECIDING, _State.HOLDING)

    async def start_of_turn(self, start_ms: int, transcript: str) -> None:
        self._start_ms, self._text = start_ms, transcript
        self._started_at = asyncio.get_running_loop().time()
        if not self.smart or not self._bot_speaking():
            self._state = _State.INTERRUPTED
            await self._interrupt(start_ms, "start-of-turn", 0)
            return
        self._state = _State.DECIDING
        self._timer.start(self.config.max_decision_ms / 1000)
        await self.words(transcript)

    async def words(self, transcript: str) -> None:
        """A TurnInfo of the open turn (Update, EagerEndOfTurn, TurnResumed) with its words."""
        if not self.holding:
            return
        self._text = transcript
        verdict = self.backchannels.verdict(transcript)
        if verdict is Verdict.SPEECH and (
            self.backchannels.other_words(transcript) >= self.config.min_words
            or self._state is _State.HOLDING
        ):
            await self._decide("words")

    async def end_of_turn(self, transcript: str) -> bool:
        """The turn ended: True if it was only backchannels over the bot (not to be answered).
        Otherwise an undecided turn interrupts now, and is answered as usual."""
        held = self.holding
        self._timer.cancel()
        if held and self.backchannels.verdict(transcript) is Verdict.BACKCHANNEL:
            self._state = _State.IDLE
            return True
        if held:
            await self._decide("end-of-turn")
        self._state = _State.IDLE
        return False

    async def _deadline(self) -> None:
        if self._state is not _State.DECIDING:
            return
        if self.backchannels.verdict(self._text) in (Verdict.BACKCHANNEL, Verdict.PARTIAL):
            self._state = _State.HOLDING
        else:
            await self._decide("deadline")

    async def _decide(self, why: str) -> None:
        self._timer.cancel()
        self._state = _State.INTERRUPTED
        after_ms = round((asyncio.get_running_loop().time() - self._started_at) * 1000)
        await self._interrupt(self._start_ms, why, after_ms)

    def _release(self) -> None:
        self._interrupt, self._bot_speaking = _never_interrupt, _not_speaking

    def reset(self) -> None:
        """A new socket starts with no turn (a reconnect)."""
        self._timer.cancel()
        self._state = _State.IDLE


async def _never_interrupt(start_ms: int, why: str, after_ms: int) -> None:
    """An ended call's barge-in: there is nothing left to interrupt."""


def _not_speaking() -> bool:
    return False
