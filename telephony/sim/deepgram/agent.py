"""Fake Voice Agent (/v1/agent/converse): Welcome, Settings, then scripted exchanges.

Steps are keyed on caller audio time counted after SettingsApplied. At a step's `at_ms`:
UserStartedSpeaking (cancelling any agent speech: barge-in); `speech_ms` later:
ConversationText(user), AgentThinking, then either a FunctionCallRequest (the reply waits for
the matching FunctionCallResponse) or the reply: AgentStartedSpeaking, ConversationText
(assistant), audio, AgentAudioDone, then a LatencyReport. A `greeting` in Settings is spoken
the same way right after SettingsApplied (no LatencyReport: no caller turn to measure from).
Each ConversationText is followed by its History message, and each answered function call by
a `function_calls` History (Options.agent_history=False: none). A step with `cancel_call_ms`
cancels its call with FunctionCallCancelled instead of answering.

Rules enforced: Settings first (other JSON first -> Error + close; audio first is ignored and
a violation), one Settings, known top-level fields only, `agent.context.messages` entries of
type History; KeepAlive while audio is flowing is a violation, and so is a FunctionCallResponse
for a call that is unknown or was cancelled; no client message for `idle_timeout_s` -> Error
CLIENT_MESSAGE_TIMEOUT + close; sessions end after `agent_session_cap_s`.

The script: a connection uses the script registered for the first of Settings' `tags` that
has one, else the default script.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection

from telephony.deepgram import messages as dm
from telephony.sim.deepgram.base import Assign, AudioClock, ConnectionLog, Options, Session
from telephony.sim.deepgram.script import AgentStep
from telephony.sim.deepgram.tts import TTS_ENCODINGS, bytes_per_ms, tts_audio

STREAMING_WINDOW_S = 1.0  # audio within this long counts as "audio is flowing"
STT_LATENCY_S = 0.05  # reported in LatencyReport, not simulated
# Error codes and close codes below that protocol.md does not list are unverified.
CLOSE_POLICY = 1008
CLOSE_ERROR = 1011


def _section(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    """body[k1][k2]..., or {} where a level is missing or not an object."""
    for key in keys:
        value = body.get(key) if isinstance(body, dict) else None
        body = value if isinstance(value, dict) else {}
    return body


class AgentSession(Session):
    endpoint = "agent"
    parse_client = staticmethod(dm.parse_agent_client)

    def __init__(
        self, opts: Options, ws: ServerConnection, log: ConnectionLog, assign: Assign
    ) -> None:
        super().__init__(opts, ws, log)
        self.assign = assign
        self.settings: dict[str, Any] | None = None
        self.clock = AudioClock(None)
        self.out_encoding, self.out_rate = "linear16", 24000
        self.steps: list[AgentStep] = []  # audio-timed, by at_ms
        self.text_steps: list[AgentStep] = []  # triggered by InjectUserMessage
        self.next_step = 0
        self.user: AgentStep | None = None  # the caller is speaking this step
        self.waiting: tuple[AgentStep, str] | None = None  # (step, function call id)
        self.waiting_since = 0.0  # audio ms of the FunctionCallRequest
        self.cancelled: set[str] = set()  # function call ids the agent cancelled
        self.calls = 0
        self.flux_listen = False
        self.speech: deque[tuple[str, bool]] = deque()  # (text, answers a caller turn)
        self.speaker: asyncio.Task[None] | None = None
        self.last_audio = -math.inf
        self.next_at = math.inf
        self.warned_early_audio = False

    # --- input -------------------------------------------------------------------------------

    async def on_open(self) -> None:
        await self.send(dm.Welcome(request_id=self.log.request_id))

    async def on_binary(self, data: bytes, now: float) -> None:
        self.last_activity = now
        if self.settings is None:
            if not self.warned_early_audio:
                self.violation("audio before SettingsApplied (ignored)")
                self.warned_early_audio = True
            return
        self.last_audio = now
        self.log.audio_bytes += len(data)
        self.log.audio_ms = self.clock.add(len(data))
        if self.clock.ms >= self.next_at:
            await self._advance()

    async def on_message(self, msg: Any, now: float) -> None:
        self.last_activity = now
        if self.settings is None:
            if isinstance(msg, dm.Settings):
                await self._apply_settings(msg)
            else:
                what = msg.type if isinstance(msg, dm.Unknown) else getattr(msg, "TYPE", "invalid")
                self.violation(f"{what} before Settings")
                error = dm.AgentError("SETTINGS_REQUIRED", f"expected Settings, got {what}")
                await self.fail(error, CLOSE_POLICY, "Settings required first")
            return
        handler = self._HANDLERS.get(type(msg))
        if handler is None:
            what = msg.type if isinstance(msg, dm.Unknown) else f"invalid message ({msg})"
            self.violation(f"unparsable client message: {what}")
            error = dm.AgentError("UNPARSABLE_CLIENT_MESSAGE", str(what))
            await self.fail(error, CLOSE_ERROR)
            return
        await handler(self, msg, now)

    def tick(self, now: float) -> None:
        if self.closing:
            return
        if now - self.opened > self.opts.agent_session_cap_s:
            self.close(1000, "session time limit")  # 2 h cap; close code unverified
        elif now - self.last_activity > self.opts.idle_timeout_s:
            error = dm.AgentError("CLIENT_MESSAGE_TIMEOUT", "no client message in time")
            self.spawn(self.fail(error, CLOSE_ERROR, "CLIENT_MESSAGE_TIMEOUT"))
            self.last_activity = math.inf  # fire once

    def error_message(self, code: str, description: str) -> dm._Wire:
        return dm.AgentError(code, description)

    # --- Settings ----------------------------------------------------------------------------

    async def _apply_settings(self, msg: dm.Settings) -> None:
        problems = dm.settings_problems(msg.body) or self._unsupported(msg.body)
        if problems:
            self.violation("invalid Settings: " + "; ".join(problems))
            error = dm.AgentError("INVALID_SETTINGS", "; ".join(problems))
            await self.fail(error, CLOSE_POLICY, "invalid Settings")
            return
        body = msg.body
        audio_in, audio_out = _section(body, "audio", "input"), _section(body, "audio", "output")
        # Omitted formats default to linear16 24 kHz (protocol.md; the docs page says 16 kHz).
        self.clock = AudioClock(
            bytes_per_ms(audio_in.get("encoding", "linear16"), audio_in.get("sample_rate", 24000))
        )
        self.out_encoding = audio_out.get("encoding", "linear16")
        self.out_rate = audio_out.get("sample_rate", 24000)
        provider = _section(_section(body, "agent", "listen"), "provider")
        self.flux_listen = provider.get("version") == "v2"
        self.settings = body

        tags = tuple(body.get("tags", ()))
        assignment = self.assign(self.endpoint, tags)
        self.log.tag, self.log.index = assignment.tag, assignment.index
        self.steps = sorted(
            (s for s in assignment.script.agent if s.at_ms is not None),
            key=lambda s: s.at_ms or 0,
        )
        self.text_steps = [s for s in assignment.script.agent if s.at_ms is None]
        self.set_faults(assignment.faults)

        await self.send(dm.SettingsApplied())
        if greeting := body["agent"].get("greeting"):
            self._say(str(greeting))
        await self._advance()

    @staticmethod
    def _unsupported(body: dict[str, Any]) -> list[str]:
        """What the fake cannot serve (the real agent supports more)."""
        problems = []
        for side in ("input", "output"):
            fmt = _section(body, "audio", side)
            rate = fmt.get("sample_rate", 24000)
            if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
                problems.append(f"audio.{side}.sample_rate must be a positive integer")
        for key in ("listen", "think", "speak"):
            if key in body["agent"] and not isinstance(body["agent"][key], dict):
                problems.append(f"agent.{key} must be an object")
        out = _section(body, "audio", "output")
        encoding = out.get("encoding", "linear16")
        if encoding not in TTS_ENCODINGS:
            problems.append(f"audio.output.encoding {encoding!r} not supported by the fake")
        if out.get("container", "none") != "none":
            problems.append("audio.output.container must be 'none' for raw telephony audio")
        return problems

    # --- the scripted conversation -----------------------------------------------------------

    def _next_event(self) -> tuple[float, str]:
        if self.user is not None:
            return (self.user.at_ms or 0) + self.user.speech_ms, "finish"
        if self.waiting is not None and (cancel_ms := self.waiting[0].cancel_call_ms) is not None:
            return self.waiting_since + cancel_ms, "cancel"
        if self.waiting is None and self.next_step < len(self.steps):
            return self.steps[self.next_step].at_ms or 0, "start"
        return math.inf, ""

    async def _emit(self, kind: str, at: float) -> None:
        if kind == "start":
            await self._user_starts(self.steps[self.next_step])
        elif kind == "cancel":
            await self._cancel_call()
        else:
            await self._user_finishes()

    async def _user_starts(self, step: AgentStep) -> None:
        self.next_step += 1
        self.user = step
        self._stop_speaking()  # barge-in: the agent stops sending audio
        await self.send(dm.UserStartedSpeaking())

    async def _user_finishes(self) -> None:
        step, self.user = self.user, None
        assert step is not None
        await self._text("user", step.user_text)
        await self._respond(step)

    async def _text(self, role: str, content: str) -> None:
        """ConversationText, then the same message in the server's History."""
        await self.send(dm.ConversationText(role, content))
        if self.opts.agent_history:
            await self.send(dm.History(role=role, content=content))

    async def _respond(self, step: AgentStep) -> None:
        await self.send(dm.AgentThinking(content=""))
        call = step.call
        if call is None:
            self._say(step.reply_text, answer=True)
            return
        self.calls += 1
        call_id = f"fc_{self.calls}"
        self.waiting, self.waiting_since = (step, call_id), self.clock.ms
        request = dm.FunctionCall(call_id, call.name, call.arguments_json, client_side=True)
        await self.send(dm.FunctionCallRequest((request,)))

    async def _cancel_call(self) -> None:
        """The caller went on talking: the speculative call and its reply are dropped."""
        assert self.waiting is not None and self.waiting[0].call is not None
        (step, call_id), self.waiting = self.waiting, None
        self.cancelled.add(call_id)
        name = step.call.name  # type: ignore[union-attr]
        await self.send(dm.FunctionCallCancelled((dm.CancelledFunction(call_id, name),)))

    # --- client messages after Settings ------------------------------------------------------

    async def _on_function_response(self, msg: dm.FunctionCallResponse, now: float) -> None:
        if msg.id in self.cancelled:
            self.violation(f"FunctionCallResponse for cancelled call {msg.id!r}")
            return
        if self.waiting is None or self.waiting[1] != msg.id:
            self.violation(f"FunctionCallResponse for unknown id {msg.id!r}")
            return
        step, _ = self.waiting
        call = step.call
        assert call is not None
        if msg.name != call.name:
            self.violation(f"FunctionCallResponse name {msg.name!r} != {call.name!r}")
        if step.cancel_call_ms is not None:
            return  # answered in time, but the caller's next words will cancel it anyway
        self.waiting = None
        if self.opts.agent_history:
            done = dm.HistoryFunctionCall(msg.id, call.name, True, call.arguments_json, msg.content)
            await self.send(dm.History(function_calls=(done,)))
        self._say(step.reply_after_function or step.reply_text, answer=True)
        await self._advance()

    async def _on_keep_alive(self, msg: dm.KeepAlive, now: float) -> None:
        if now - self.last_audio < STREAMING_WINDOW_S:
            self.violation("KeepAlive while audio is flowing")

    async def _on_inject_agent(self, msg: dm.InjectAgentMessage, now: float) -> None:
        # Refused while the caller speaks; during agent speech "queue"/"interrupt" are honoured
        # and the default is refused (INJECT_AGENT_MESSAGE_DURING_AGENT_SPEECH; unverified).
        speaking = self.speaker is not None
        if self.user is not None or (speaking and msg.behavior not in ("queue", "interrupt")):
            who = "user" if self.user is not None else "agent"
            await self.send(dm.InjectionRefused(f"cannot inject while the {who} is speaking"))
            return
        if msg.behavior == "interrupt":
            self._stop_speaking()
        self._say(msg.message)

    async def _on_inject_user(self, msg: dm.InjectUserMessage, now: float) -> None:
        await self._text("user", msg.content)
        wanted = msg.content.strip().casefold()
        for step in self.text_steps:
            if step.user_text.strip().casefold() == wanted:
                self.text_steps.remove(step)
                await self._respond(step)
                await self._advance()  # a call it dispatched may be due to be cancelled
                return

    async def _on_force_end_turn(self, msg: dm.ForceEndTurn, now: float) -> None:
        if not self.flux_listen:
            await self.send(dm.AgentWarning("FORCE_END_TURN_UNSUPPORTED", "needs Flux listen"))
        elif self.user is not None:
            await self._user_finishes()
            await self._advance()

    async def _on_settings_again(self, msg: dm.Settings, now: float) -> None:
        self.violation("second Settings on one socket")
        error = dm.AgentError("SETTINGS_ALREADY_APPLIED", "one Settings per socket")
        await self.fail(error, CLOSE_POLICY, "second Settings")

    async def _on_update(self, msg: Any, now: float) -> None:
        reply = {
            dm.UpdatePrompt: dm.PromptUpdated,
            dm.UpdateSpeak: dm.SpeakUpdated,
            dm.UpdateThink: dm.ThinkUpdated,
            dm.UpdateListen: dm.ListenUpdated,
        }[type(msg)]
        await self.send(reply())

    _HANDLERS: dict[type, Any] = {  # noqa: RUF012 - a read-only dispatch table
        dm.FunctionCallResponse: _on_function_response,
        dm.KeepAlive: _on_keep_alive,
        dm.InjectAgentMessage: _on_inject_agent,
        dm.InjectUserMessage: _on_inject_user,
        dm.ForceEndTurn: _on_force_end_turn,
        dm.Settings: _on_settings_again,
        dm.UpdatePrompt: _on_update,
        dm.UpdateSpeak: _on_update,
        dm.UpdateThink: _on_update,
        dm.UpdateListen: _on_update,
    }

    # --- speaking ----------------------------------------------------------------------------

    def _say(self, text: str, *, answer: bool = False) -> None:
        """Queue speech; `answer`: a reply to a caller turn (a LatencyReport follows it)."""
        self.speech.append((text, answer))
        if self.speaker is None:
            self.speaker = self.spawn(self._speak_queue())

    def _stop_speaking(self) -> None:
        if self.speaker is not None:
            self.speaker.cancel()
            self.speaker = None
        self.speech.clear()

    async def _speak_queue(self) -> None:
        rate = bytes_per_ms(self.out_encoding, self.out_rate) or 8.0
        try:
            while self.speech and not self.closing:
                text, answer = self.speech[0]
                await self.first_byte_delay()
                tts = self.opts.speak_first_byte_ms / 1000
                ttt = self.opts.agent_latency_s
                total = round(tts + ttt, 3)
                await self.send(
                    dm.AgentStartedSpeaking(total_latency=total, tts_latency=tts, ttt_latency=ttt)
                )
                await self._text("assistant", text)
                audio = tts_audio(
                    text, self.opts.speak_ms_per_char, self.out_encoding, self.out_rate
                )
                await self.stream(audio, rate)
                await self.send(dm.AgentAudioDone())
                if answer:  # Deepgram reports a turn's latency after its reply
                    report = dm.LatencyReport(
                        stt_latency=STT_LATENCY_S,
                        ttt_token_latency=ttt,
                        ttt_text_latency=ttt,
                        tts_latency=tts,
                        total_latency=round(STT_LATENCY_S + total, 3),
                    )
                    await self.send(report)
                self.speech.popleft()
        finally:
            if self.speaker is asyncio.current_task():
                self.speaker = None
