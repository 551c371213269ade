"""Voice Agent mode: caller audio to Deepgram's /v1/agent/converse, its speech back to Twilio.

Deepgram does listening, thinking and speaking; we own what the caller hears. Agent audio goes
through the same playout and `BotSpeech` as Flux mode (one segment per reply, its text from
ConversationText, marked every 500 ms by the playout), so barge-in, heard text, the transcript
row and playback-gated actions are one piece of code for both modes.

- UserStartedSpeaking -> barge-in (Twilio clear, our queue dropped, the reply marked heard only
  as far as its echoed marks).
- AgentAudioDone means Deepgram finished *sending*; the reply ends for us when its last mark
  echoes.
- end_call / transfer_call wait for the goodbye to play; a barge-in cancels them.
- FunctionCallCancelled: the agent dropped a call it dispatched (the caller resumed the turn
  or barged in). A webhook still running is abandoned unanswered; a hang-up or transfer it
  asked for is called off.
- History: the server's own copy of the conversation, what its LLM saw (function calls
  included). A reconnect hands that to the new socket; with no History, our transcript.
- LatencyReport: per-stage latency of a reply, on that reply's bot turn (see
  `_on_latency_report`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import orjson

from telephony.actions import FUNCTION_ACTIONS, Action
from telephony.deepgram import messages as dm
from telephony.deepgram.agent import AgentClient
from telephony.http_pool import tls_context
from telephony.outcome import Outcome
from telephony.retry import Backoff
from telephony.session.engine import CallContext
from telephony.session.fallback import hand_over
from telephony.session.idle import IdleWatch
from telephony.session.idle import config_of as idle_config_of
from telephony.session.link import Link
from telephony.session.segments import Segment
from telephony.session.speech import BotReply, BotSpeech
from telephony.session.tasks import TaskSet
from telephony.session.upstream import Upstream
from telephony.transcript import CUT_BY_CALL_END, CUT_BY_CALLER, EventKind, Role

ACTION_GRACE_S = 3.0  # end_call and then silence for this long: act anyway
REPLY_OVERDUE_MESSAGE = "Sorry, just a moment."
SESSION_CAP_S = 7200.0  # Deepgram closes agent sessions after 2 hours
SESSION_CAP_MARGIN_S = 60.0  # act this long before the cap
CAP_MESSAGES = {
    "warn": "Just so you know, we will need to wrap up this call in about a minute.",
    "transfer": "I'm going to connect you with a colleague now.",
    "end": "We've reached the time limit for this call. Thank you for calling, goodbye.",
}


class AgentEngine:
    def __init__(
        self,
        ctx: CallContext,
        client: Callable[[list[dict[str, str]] | None], AgentClient],
        *,
        http: httpx.AsyncClient | None = None,
        session_cap_s: float = SESSION_CAP_S,
        reconnect: Backoff | None = None,
    ) -> None:
        self.ctx = ctx
        # Caller audio waits here while the agent socket is replaced (bounded, drops counted);
        # the agent settles nothing we could replay, so no recent window is kept.
        self.upstream = Upstream(recent_bytes=0)
        self._context_next: list[dict[str, Any]] | None = None  # a new socket's Settings context
        self.link = Link(
            ctx,
            "agent",
            lambda: client(self._context_next),
            give_up=self._give_up,
            upstream=self.upstream,
            on_lost=self._lost,
            on_live=self._on_live,
            backoff=reconnect,
        )
        self.speech = BotSpeech(ctx, on_finished=self._reply_finished)
        self._http = http
        self._session_cap_s = session_cap_s
        self._reply: BotReply | None = None
        self._segment: Segment | None = None  # the reply being spoken
        self._user_started_ms: int | None = None
        self._last_caller_end_ms: int | None = None
        self._last_caller_end_at: float | None = None
        self._pending_action: Action | None = None  # end_call / transfer_call / session cap
        self._action_after = 0  # ...runs once a reply numbered >= this has played
        self._action_call: str | None = None  # the function call's id that asked for it
        self._action_outcome: Outcome | None = None  # how it ends the call (bot-hangup)
        self._calls: dict[str, asyncio.Task[None]] = {}  # function calls not yet answered
        # The server's History as Settings context entries; None until the first arrives.
        self._history: list[dict[str, Any]] | None = None
        self._given: list[dict[str, Any]] = []  # the context this socket started from
        self._context_source = ""  # "server" (its History) or "transcript"
        self._echo: deque[dict[str, Any]] = deque()  # ...in case the server sends it back
        self._last_sent: BotReply | None = None  # a reply a LatencyReport may still follow
        self._tasks = TaskSet(ctx.log)
        self._action_timer = self._tasks.timer("action-grace", self._action_grace_over)
        self.idle = IdleWatch(
            ctx, idle_config_of(ctx.profile), self._tasks, say=self._say_idle, busy=self._busy
        )
        self.speech.on_quiet = self.idle.bot_quiet
        self._reply_timer = self._tasks.timer("reply-watchdog", self._reply_overdue)
        agent = ctx.profile.agent
        self._functions = {f.name: f for f in agent.functions} if agent else {}

    # --- Engine interface -------------------------------------------------------------------

    @property
    def client(self) -> AgentClient:
        return self.link.client

    async def run(self) -> None:
        # A start the link cannot make hands the call over (and never returns).
        await self.link.start()
        self._tasks.spawn(self._session_cap(), "session-cap")
        await self.link.run(self._on_server)

    def _on_server(self, event: dm.AgentServerEvent | bytes) -> Awaitable[None] | None:
        if isinstance(event, bytes):  # agent speech: handled at once, no coroutine per chunk
            self._on_audio(event)
            return None
        return self._on_event(event)

    def on_caller_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.upstream.push(timestamp_ms, payload)  # the client holds it until SettingsApplied

    def _lost(self, reason: str) -> None:
        """The agent socket failed. Its successor's Settings carry the conversation so far (no
        new greeting). Kept: the transcript, as context for the agent's LLM. Lost: the reply
        that was being spoken (it ends where its audio stopped) and what the agent was thinking.
        """
        if self._reply is not None:
            self._end_reply(complete=False)
        context, self._context_source = self._context()
        self._context_next = context
        self._given, self._echo = context, deque(context)

    def _on_live(self, client: AgentClient, reason: str) -> dict[str, Any]:
        if self._context_next is None:
            return {}
        return {"context": len(self._context_next), "source": self._context_source}

    async def _give_up(self, endpoint: str, reason: str) -> None:
        await hand_over(self.ctx, endpoint, reason)

    def _context(self) -> tuple[list[dict[str, Any]], str]:
        """The conversation so far for a new socket's Settings, and where it came from.

        The server's History is what the agent's LLM actually saw (function calls included);
        without any, our transcript's heard text stands in for it.
        """
        if self._history is not None:
            return list(self._history), "server"
        turns = self.ctx.transcript.turns
        return [
            {
                "type": "History",
                "role": "user" if t.role == "caller" else "assistant",
                "content": t.heard or t.text,
            }
            for t in turns
            if (t.heard or t.text)
        ], "transcript"

    @property
    def keepalives_sent(self) -> int:
        """JSON KeepAlives sent on every agent socket of this call (for the metrics)."""
        return self.link.keepalives_sent

    @property
    def interim(self) -> Mapping[Role, str]:
        return {}  # the agent's turns are not shown live

    def on_outbound_audio(self, timestamp_ms: int, payload: bytes) -> None:
        """A bot stream carries no outbound track."""

    def on_dtmf(self, ms: int, digit: str) -> None:
        self.ctx.transcript.event(ms, EventKind.DTMF, digit=digit)
        self.idle.caller_active()
        self._tasks.spawn(self.client.inject_user_message(f"The caller pressed {digit}."), "dtmf")

    async def close(self) -> None:
        self.speech.close()
        self._tasks.cancel_all()
        self.speech.cancel_actions()
        await self.link.close()

    # --- mid-call control -------------------------------------------------------------------

    async def update_prompt(self, prompt: str) -> None:
        self.ctx.transcript.event(self.ctx.now_ms(), EventKind.PROMPT_UPDATED)
        await self.client.update_prompt(prompt)

    async def say(self, message: str) -> None:
        """Make the agent say something now (InjectAgentMessage)."""
        await self.client.inject_agent_message(message)

    # --- agent audio -> playout ---------------------------------------------------------------

    def _on_audio(self, data: bytes) -> None:
        reply = self._reply or self._open_reply()
        if self._segment is None:
            self._segment = self.speech.segment(reply, " ".join(reply.text))
        self.speech.audio(reply, self._segment, data)

    def _watch_for_reply(self) -> None:
        """The caller finished: if the agent says nothing in time, prompt it (no dead air)."""
        agent = self.ctx.profile.agent
        self._reply_timer.start(agent.reply_timeout_s if agent else 8.0)

    async def _reply_overdue(self) -> None:
        self.ctx.transcript.event(self.ctx.now_ms(), EventKind.REPLY_WATCHDOG)
        await self.say(REPLY_OVERDUE_MESSAGE)

    def _open_reply(self) -> BotReply:
        self._reply_timer.cancel()
        reply = self.speech.new_reply()
        reply.eot_ms, reply.eot_at = self._last_caller_end_ms, self._last_caller_end_at
        self._last_caller_end_ms = self._last_caller_end_at = None
        self._reply = reply
        return reply

    def _end_reply(self, *, complete: bool = True) -> None:
        """AgentAudioDone (`complete`) or the socket died: no more audio for this reply; it
        finishes when its marks echo."""
        reply = self._reply
        if reply is None:
            return
        if self._segment is not None:
            self.speech.end_segment(self._segment, complete=complete)
            self._segment = None
        self._reply = None
        self.speech.generated(reply)

    # --- agent events ---------------------------------------------------------------------

    async def _on_event(self, event: Any) -> None:
        ms = self.ctx.now_ms()
        if isinstance(event, dm.UserStartedSpeaking):
            self.ctx.transcript.signal("interim", role="caller", text="")  # live views
            cut = self._reply
            await self._barge_in(ms)
            if cut is not None and self._reply is None:
                self._last_sent = cut  # its LatencyReport may still come
        elif isinstance(event, dm.ConversationText):
            self._on_text(event, ms)
        elif isinstance(event, dm.AgentStartedSpeaking):
            reply = self._reply or self._open_reply()
            reply.meta.update(
                total_latency=event.total_latency,
                tts_latency=event.tts_latency,
                ttt_latency=event.ttt_latency,
            )
        elif isinstance(event, dm.AgentThinking):
            self.ctx.transcript.event(ms, EventKind.AGENT_THINKING)
        elif isinstance(event, dm.AgentAudioDone):
            if self._reply is not None and "latency_report" not in self._reply.meta:
                self._last_sent = self._reply  # its LatencyReport comes next
            self._end_reply()
        elif isinstance(event, dm.FunctionCallRequest):
            for call in event.functions:
                if call.client_side:
                    task = self._tasks.spawn(self._function_call(call), f"function-{call.name}")
                    self._calls[call.id] = task
        elif isinstance(event, dm.FunctionCallCancelled):
            for cancelled in event.functions:
                self._cancel_function(cancelled, ms)
        elif isinstance(event, dm.History):
            self._on_history(event)
        elif isinstance(event, dm.LatencyReport):
            self._on_latency_report(event, ms)
        elif isinstance(event, dm.AgentWarning):
            self.ctx.log.warning("agent warning %s: %s", event.code, event.description)
            self.ctx.transcript.event(
                ms, EventKind.WARNING, code=event.code, detail=event.description
            )
        elif isinstance(event, dm.InjectionRefused):
            self.ctx.transcript.event(ms, EventKind.INJECTION_REFUSED, detail=event.message)

    def _on_text(self, event: dm.ConversationText, ms: int) -> None:
        if event.role == "user":
            self.idle.caller_active()
            start = self._user_started_ms if self._user_started_ms is not None else ms
            self.ctx.transcript.add_turn("caller", event.content, start, ms)
            self._watch_for_reply()
            self._user_started_ms = None
            self._last_caller_end_ms = ms
            self._last_caller_end_at = asyncio.get_running_loop().time()
        else:
            reply = self._reply or self._open_reply()
            reply.text.append(event.content)
            if self._segment is not None:  # audio came first: the text is the segment's too
                self._segment.text = " ".join(reply.text)
            if reply.first_text_at is None:
                reply.first_text_at = asyncio.get_running_loop().time()

    async def _barge_in(self, ms: int) -> None:
        self._user_started_ms = ms
        self.idle.caller_active()
        if await self.speech.barge_in(ms):
            self._reply, self._segment = None, None
            if self._pending_action is not None:  # asked for, goodbye not yet spoken
                self.ctx.transcript.event(
                    ms, EventKind.ACTION_CANCELLED, action=self._pending_action
                )
                self._pending_action = None
                self._action_timer.cancel()

    def _reply_finished(self, reply: BotReply) -> None:
        if reply.cut_by in (CUT_BY_CALLER, CUT_BY_CALL_END):  # a drop still counts as said
            return
        pending = self._pending_action is not None
        if pending and reply.number >= self._action_after and not self.speech.audible:
            self._run_pending_action()  # the goodbye said after the request has played

    def _on_history(self, event: dm.History) -> None:
        entry = event.to_dict()
        if self._echo and entry == self._echo[0]:  # the context we gave this socket, sent back
            self._echo.popleft()
            return
        self._echo.clear()
        if self._history is None:  # this socket's conversation began with the context given
            self._history = list(self._given)
        self._history.append(entry)

    def _on_latency_report(self, event: dm.LatencyReport, ms: int) -> None:
        """Deepgram sends the report after the reply it measures: it belongs to the reply the
        agent last stopped sending (AgentAudioDone, or cut by a barge-in) if that has had none
        yet, else to the reply still arriving. The bot turn is written when the reply has
        played, usually well after the report, so it goes into the reply's meta and from
        there onto the turn; a turn already written gets a `latency-report` event instead."""
        report = {
            key: round(value * 1000, 1)
            for key, value in (
                ("stt_ms", event.stt_latency),
                ("ttt_token_ms", event.ttt_token_latency),
                ("ttt_text_ms", event.ttt_text_latency),
                ("ttt_tool_ms", event.ttt_tool_latency),
                ("ttt_thinking_ms", event.ttt_thinking_latency),
                ("tts_ms", event.tts_latency),
                ("total_ms", event.total_latency),
            )
            if value is not None
        }
        reply, self._last_sent = self._last_sent or self._reply, None
        if reply is not None and not reply.finished:
            reply.meta["latency_report"] = report
            return
        turn = reply.turn.index if reply is not None and reply.turn is not None else None
        self.ctx.transcript.event(ms, EventKind.LATENCY_REPORT, turn=turn, **report)

    def _busy(self) -> bool:
        """Not silence: the caller is speaking, the agent is thinking or speaking, or the call
        is about to end."""
        return (
            self._user_started_ms is not None
            or self._last_caller_end_ms is not None
            or self._reply is not None
            or bool(self.speech.active)
            or self._pending_action is not None
        )

    async def _say_idle(self, text: str, final: bool) -> None:
        """A reprompt, or the goodbye after which the call hangs up (idle.py)."""
        if final:
            self._request_action("hangup", outcome=Outcome.IDLE_HANGUP)
        await self.say(text)

    # --- function calls ---------------------------------------------------------------------

    async def _function_call(self, call: dm.FunctionCall) -> None:
        ms = self.ctx.now_ms()
        self.ctx.transcript.event(
            ms, EventKind.FUNCTION_CALL, name=call.name, arguments=call.arguments
        )
        try:
            content = await self._run_function(call)
        except Exception as exc:  # any failure is answered, and the call goes on
            self.ctx.log.warning("function %s failed: %s", call.name, exc)
            content = orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}).decode()
        finally:  # answered from here on, or cancelled (and then never answered)
            self._calls.pop(call.id, None)
        await self.client.function_result(call.id, call.name, content)

    def _cancel_function(self, cancelled: dm.CancelledFunction, ms: int) -> None:
        """The agent dropped a call it dispatched: stop it, never answer it, and call off a
        hang-up or transfer it asked for (an answered end_call included)."""
        task = self._calls.pop(cancelled.id, None)
        if task is not None:
            task.cancel()  # a webhook still running is abandoned
        data: dict[str, Any] = {"name": cancelled.name, "id": cancelled.id}
        data["stopped"] = task is not None  # False: it had been answered already
        if self._pending_action is not None and self._action_call == cancelled.id:
            data["action"] = self._pending_action
            self._pending_action = self._action_call = None
            self._action_timer.cancel()
        self.ctx.transcript.event(ms, EventKind.FUNCTION_CANCELLED, **data)

    async def _run_function(self, call: dm.FunctionCall) -> str:
        action = FUNCTION_ACTIONS.get(call.name)
        if action is not None:
            self._request_action(action, call_id=call.id)
            return orjson.dumps({"ok": True, "note": "say goodbye; the line closes after"}).decode()
        function = self._functions.get(call.name)
        if function is None:
            return orjson.dumps({"error": f"unknown function {call.name}"}).decode()
        arguments = orjson.loads(call.arguments or "{}")
        http = self._http or httpx.AsyncClient(verify=tls_context())
        try:
            response = await http.post(
                str(function.url), json=arguments, timeout=function.timeout_s
            )
        finally:
            if self._http is None:
                await http.aclose()
        if response.status_code >= 400:
            return orjson.dumps({"error": f"HTTP {response.status_code}"}).decode()
        return response.text

    def _request_action(
        self, action: Action, *, call_id: str | None = None, outcome: Outcome | None = None
    ) -> None:
        """Hang up / transfer after the next thing the agent says, or after a quiet grace."""
        self._pending_action, self._action_after = action, self.speech.started
        self._action_call, self._action_outcome = call_id, outcome
        self._action_timer.start(ACTION_GRACE_S)

    def _run_pending_action(self) -> None:
        action, self._pending_action = self._pending_action, None
        self._action_timer.cancel()
        if action is not None:
            self.speech.act(action, self._action_outcome)

    def _action_grace_over(self) -> None:
        """The goodbye came before the request, or none came: do not hold the line open."""
        if self._reply is None and not self.speech.audible:
            self._run_pending_action()
        else:  # the agent is still speaking: look again after another grace
            self._action_timer.start(ACTION_GRACE_S)

    # --- the 2-hour cap -----------------------------------------------------------------------

    async def _session_cap(self) -> None:
        """Deepgram cuts agent sessions at 2 h: end, transfer or warn first, never a silent cut."""
        await asyncio.sleep(max(0.0, self._session_cap_s - SESSION_CAP_MARGIN_S))
        action = self.ctx.profile.agent.session_cap_action if self.ctx.profile.agent else "end"
        self.ctx.transcript.event(self.ctx.now_ms(), EventKind.SESSION_CAP, action=action)
        if action != "warn":
            self._request_action("hangup" if action == "end" else "transfer")
        await self.client.inject_agent_message(CAP_MESSAGES[action], behavior="queue")
