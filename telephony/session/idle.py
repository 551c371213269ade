"""A silent caller: reprompt after the bot has finished speaking, then say goodbye and hang up.

One mechanism for Flux and Voice Agent mode. The engine tells it three things:

- `bot_quiet()`: a reply played out and no other is under way (BotSpeech.on_quiet); the
  silence is counted from here, with one timer (nothing per audio frame);
- `caller_active()`: the caller spoke (a turn started) or pressed a key: the timer stops
  and the count of reprompts starts again;
- `busy()` (a callback it asks when the timer fires): a caller turn is open or the bot is
  about to speak, so this is not silence after all.

Reprompts are said like any other reply; the caller may talk over them. After `reprompts` of
them the goodbye is said with a hang-up that runs once it has played, ending the call as
`idle-hangup` (a barge-in on the goodbye cancels the hang-up, as for any goodbye). The Voice
Agent's older `silence_nudge_s` is the same thing with no limit (`config_of`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from telephony.config import Profile
from telephony.config.idle import IdleConfig
from telephony.session.engine import CallContext
from telephony.session.tasks import TaskSet
from telephony.transcript import EventKind


def config_of(profile: Profile) -> IdleConfig | None:
    """The profile's idle policy: `idle`, or the agent's `silence_nudge_s` (nudges without end)."""
    if profile.idle is not None:
        return profile.idle
    agent = profile.agent
    if profile.mode == "agent" and agent is not None and agent.silence_nudge_s is not None:
        return IdleConfig(
            reprompt_after_s=agent.silence_nudge_s, reprompts=None, messages=[agent.nudge_message]
        )
    return None


class IdleWatch:
    """`say(text, final)` speaks a reprompt, or (final) the goodbye that hangs up after it."""

    def __init__(
        self,
        ctx: CallContext,
        config: IdleConfig | None,
        tasks: TaskSet,
        *,
        say: Callable[[str, bool], Awaitable[None] | None],
        busy: Callable[[], bool],
        localize: Callable[[IdleConfig], IdleConfig] = lambda config: config,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self._localize = localize  # its texts in the call's language (session/language.py)
        self._say = say
        self._busy = busy
        self._timer = tasks.timer("idle", self._silent)
        tasks.at_end(self._release)
        self.reprompts = 0  # said since the caller last spoke
        self.done = False  # the goodbye was said

    def _release(self) -> None:
        """The call is over: the engine's methods let go (see TaskSet.at_end)."""
        self._say, self._busy, self._localize = _say_nothing, _always_busy, _as_is

    def bot_quiet(self) -> None:
        if self.config is not None and not self.done and not self._busy():
            self._timer.start(self.config.reprompt_after_s)

    def caller_active(self) -> None:
        self._timer.cancel()
        self.reprompts = 0
        self.done = False  # a barge-in on the goodbye keeps the call going

    async def _silent(self) -> None:
        config = self.config
        if config is None or self._busy():
            return
        ms = self.ctx.now_ms()
        config = self._localize(config)
        if config.reprompts is None or self.reprompts < config.reprompts:
            self.reprompts += 1
            text = config.messages[(self.reprompts - 1) % len(config.messages)]
            self.ctx.transcript.event(
                ms, EventKind.NUDGE, reprompt=self.reprompts, after_s=config.reprompt_after_s
            )
            final = False
        else:
            self.done = True
            self.ctx.transcript.event(ms, EventKind.IDLE_GOODBYE, reprompts=self.reprompts)
            text, final = config.goodbye, True
        result = self._say(text, final)
        if result is not None:
            await result


def _say_nothing(text: str, final: bool) -> None:
    """An ended call's reprompt: nobody to say it to."""


def _always_busy() -> bool:
    return True


def _as_is(config: IdleConfig) -> IdleConfig:
    return config
