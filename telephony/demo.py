"""`telephony call`: one offline phone call through the real app and every fake.

Starts, on loopback ports, the fake Deepgram (scripted caller turns), the fake LLM, the fake
Twilio REST API and the app itself under uvicorn; dials it with the fake Twilio caller; and
returns the call's transcript. This is a top-level module like the CLI: it may import routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette

from routes.app import create_app
from routes.state import services_of
from telephony.config import load_config
from telephony.inprocess import bind_loopback, serve_app
from telephony.session.summary import CallSummary
from telephony.settings import Settings
from telephony.sim.deepgram.script import Endpoint, FaultKind
from telephony.sim.deepgram_server import (
    AgentStep,
    FakeDeepgram,
    Fault,
    Script,
    ScriptedFunctionCall,
    ScriptedTurn,
)
from telephony.sim.fake_llm import FakeLLM
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller
from telephony.sim.twilio_caller import silence as caller_silence
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.insights import PENDING, insights_of
from telephony.transcript import Event, Transcript, Turn

DEMO_AUTH_TOKEN = "demo-auth-token"
DEMO_DEEPGRAM_KEY = "demo-deepgram-key"
DEMO_LLM_KEY_ENV = "TELEPHONY_DEMO_LLM_KEY"
DEFAULT_CONFIG = Path("infra/numbers.example.yaml")


def default_script() -> Script:
    """A short conversation with one barge-in: the caller cuts the hours answer short."""
    return Script(
        turns=[
            ScriptedTurn(start_ms=3200, end_ms=4400, text="What are your opening hours?"),
            ScriptedTurn(start_ms=6400, end_ms=7600, text="Okay thanks, goodbye."),
        ]
    )


def default_transcribe_scripts() -> tuple[Script, Script]:
    """A forwarded call, both sides transcribed: (the caller's turns, the staff member's).

    Times are each side's audio time from the fork's start (the person answers at once)."""
    caller = Script(
        turns=[
            ScriptedTurn(start_ms=1200, end_ms=2600, text="Hi, I'd like to move my delivery."),
            ScriptedTurn(start_ms=5200, end_ms=6400, text="Thursday morning, please."),
        ]
    )
    staff = Script(
        turns=[
            ScriptedTurn(start_ms=3000, end_ms=4800, text="Sure, which day suits you better?"),
            ScriptedTurn(start_ms=6800, end_ms=8000, text="Done, Thursday morning it is."),
        ]
    )
    return caller, staff


def default_agent_script() -> Script:
    """An agent conversation: a question, a barge-in, then goodbye through end_call."""
    return Script(
        agent=[
            AgentStep(
                at_ms=3000,
                user_text="What can you help me with?",
                reply_text="I can check an order, tell you our hours, or put you through "
                "to a colleague. Which would you like?",
            ),
            AgentStep(
                at_ms=5200,
                user_text="Never mind, that's all. Bye.",
                reply_text="",
                function_call=ScriptedFunctionCall("end_call", '{"reason": "done"}'),
                reply_after_function="Thanks for calling Acme. Goodbye!",
            ),
        ]
    )


FAULT_KINDS: dict[str, tuple[Endpoint, FaultKind]] = {
    "flux-drop": ("flux", "drop"),
    "flux-silent": ("flux", "silent"),
    "flux-stuck": ("flux", "stuck"),
    "flux-error": ("flux", "error"),
    "agent-drop": ("agent", "drop"),
    "speak-drop": ("speak", "drop"),
}


def parse_fault(spec: str) -> Fault:
    """`KIND@SECONDS`, e.g. `flux-drop@2.5`: break that connection at that point of its audio."""
    kind, _, at = spec.partition("@")
    try:
        seconds = float(at)
    except ValueError:
        seconds = -1.0
    if kind not in FAULT_KINDS or not seconds >= 0:  # `not >=`: also refuses nan
        raise ValueError(
            f"--fault {spec!r}: expected KIND@SECONDS (seconds >= 0) with KIND one of "
            f"{', '.join(FAULT_KINDS)}"
        )
    endpoint, fault = FAULT_KINDS[kind]
    return Fault(endpoint=endpoint, at_ms=round(seconds * 1000), kind=fault)


# `telephony call --say`: the caller hangs up this long after the bot's answer has played.
SAY_HANGUP_S = 1.0


async def hang_up_after_reply(app: Any, hangup: asyncio.Event, delay_s: float) -> None:
    """Set `hangup` `delay_s` after the first bot turn that answers a caller turn has closed
    (its audio played out or was cut off): a one-question demo ends when it is answered."""
    registry = services_of(app).registry
    while not registry.live:  # noqa: ASYNC110 (the registry has no event to wait on)
        await asyncio.sleep(0.02)  # the demo's one call, once its media stream has started
    transcript = next(iter(registry.live.values())).transcript
    answered = _Answered(transcript)
    transcript.listeners.append(answered)
    await answered.event.wait()
    await asyncio.sleep(delay_s)
    hangup.set()


class _Answered:
    """A transcript listener: `event` is set once a bot turn follows a caller turn. (Not a
    class per call: a class is a cycle, and this one would keep the ended call with it.)"""

    def __init__(self, transcript: Transcript) -> None:
        self.transcript = transcript
        self.event = asyncio.Event()

    def on_turn(self, turn: Turn) -> None:
        earlier = self.transcript.turns[: turn.index - self.transcript.first_index]
        if turn.role == "bot" and any(t.role == "caller" for t in earlier):
            self.event.set()

    def on_event(self, event: Event) -> None:
        pass


def say_script(text: str, mode: str = "flux") -> Script:
    if mode == "transcribe":  # the caller says it once the person has answered
        return Script(turns=[ScriptedTurn(start_ms=800, end_ms=800 + 80 * len(text), text=text)])
    if mode == "agent":
        return Script(agent=[AgentStep(at_ms=3000, user_text=text, reply_text="Okay.")])
    return Script(turns=[ScriptedTurn(start_ms=3200, end_ms=3200 + 80 * len(text), text=text)])


@dataclass
class OfflineCall:
    """What a demo call produced: the caller's view and the service's transcript."""

    caller: CallResult
    summary: CallSummary | None  # the last stream of the call (its end is the call's end)
    mode: str
    deepgram: FakeDeepgram
    rest: FakeTwilioRest
    llm: FakeLLM
    extra: dict[str, Any] = field(default_factory=dict)
    # Every stream of the call in order: the bot part, then its transcription after a transfer.
    parts: list[CallSummary] = field(default_factory=list)
    metrics: str = ""  # the service's /metrics text once the call had ended

    def as_json(self) -> dict[str, Any]:
        summary = self.summary
        parts = self.parts or ([summary] if summary is not None else [])
        turns = []
        events: list[dict[str, Any]] = []
        for part in parts:
            for t in part.transcript.turns:
                turns.append(
                    {
                        "role": t.role,
                        "text": t.text,
                        "heard": t.heard,
                        "interrupted": t.interrupted,
                        "start_ms": t.start_ms,
                        "end_ms": t.end_ms,
                        "latency_ms": t.latency_ms,
                        "meta": dict(t.meta or {}),
                    }
                )
            events += [e.as_dict() for e in part.transcript.events]
        if len(parts) > 1:  # stable: each part's events keep their order
            events.sort(key=lambda e: e["ms"])
        return {
            "call_sid": self.caller.call_sid,
            "mode": self.mode,
            "end_reason": str(summary.end_reason) if summary else None,  # an Outcome
            "end_detail": summary.end_detail if summary else None,
            "turns": turns,
            "events": events,
        }


def _demo_config(source: Path, llm_url: str) -> Path:
    """The admin YAML with LLM responders, fallbacks too, pointed at the fake LLM (offline):
    one fake serves every backend, told apart by model (its `models` scripts them)."""
    data = yaml.safe_load(source.read_text())
    for profile in (data.get("profiles") or {}).values():
        responder = profile.get("responder") or {}
        if responder.get("type") == "llm":
            responder["base_url"] = llm_url
            responder["api_key_env"] = DEMO_LLM_KEY_ENV
            for fallback in responder.get("fallbacks") or []:  # those naming their own
                if "base_url" in fallback:
                    fallback["base_url"] = llm_url
                if "api_key_env" in fallback:
                    fallback["api_key_env"] = DEMO_LLM_KEY_ENV
    out = Path(tempfile.mkdtemp(prefix="telephony-demo-")) / source.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    load_config(out)  # fail early, with the file's own errors
    return out


def settings_for_fakes(
    config: Path,
    public_url: str,
    deepgram: FakeDeepgram,
    rest: FakeTwilioRest,
    auth_token: str,
    deepgram_key: str,
    **overrides: Any,
) -> Settings:
    """Settings that point the app at the fakes: the same code talks to the real services."""
    return Settings(
        TELEPHONY_CONFIG=config,
        TELEPHONY_PUBLIC_URL=public_url,
        TWILIO_AUTH_TOKEN=auth_token,
        TWILIO_ACCOUNT_SID=rest.account_sid,
        TWILIO_API_URL=rest.url,
        DEEPGRAM_API_KEY=deepgram_key,
        DEEPGRAM_URL=deepgram.url,
        DEEPGRAM_AGENT_URL=deepgram.url,
        # Its own port: the fake's /v1/read is HTTP (telephony/sim/deepgram/read.py).
        DEEPGRAM_REST_URL=deepgram.read.url if deepgram.read.started else "",
        # The fakes' tokens are in this repository, so this is a development run by definition.
        **{
            "TELEPHONY_SESSION_SECRET": secrets.token_urlsafe(32),
            "TELEPHONY_ALLOW_INSECURE_DEV": True,
            **overrides,
        },
    )


def first_number(config_path: Path, mode: str) -> str:
    config = load_config(config_path)
    for number, name in config.numbers.items():
        if config.profiles[name].mode == mode:
            return number
    raise ValueError(f"no {mode}-mode number in {config_path}")


@contextlib.asynccontextmanager
async def fakes(
    script: Script,
    *,
    deepgram_options: dict[str, Any] | None = None,
    llm_options: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[FakeDeepgram, FakeLLM, FakeTwilioRest]]:
    # /v1/read too: profiles with `insights:` on analyse the demo's calls offline.
    options = {"serve_read": True, **(deepgram_options or {})}
    deepgram = FakeDeepgram(api_key=DEMO_DEEPGRAM_KEY, script=script, **options)
    llm = FakeLLM(api_key="demo-llm-key", **(llm_options or {}))
    rest = FakeTwilioRest(auth_token=DEMO_AUTH_TOKEN)
    await deepgram.start()
    await llm.start()
    await rest.start()
    try:
        yield deepgram, llm, rest
    finally:
        await rest.stop()
        await llm.stop()
        await deepgram.stop()


async def run_offline_call(
    *,
    number: str | None = None,
    mode: str = "flux",
    script: Script | None = None,
    audio: bytes | None = None,
    config_path: Path = DEFAULT_CONFIG,
    timeline: Sequence[Any] = (),
    max_call_ms: int = 30_000,
    deepgram_options: dict[str, Any] | None = None,
    llm_options: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
    faults: Sequence[Fault] = (),
    staff_script: Script | None = None,
    agent_audio: bytes | None = None,
    hang_up_after_reply_s: float | None = None,
) -> OfflineCall:
    """One offline call. Transcribe mode (and a flux/agent call transferred with its
    transcription): `script` gives the caller's Nova turns, `staff_script` the staff side's
    (Nova sockets are tagged with the side), and `agent_audio` is what the person who answers
    says (the fork's outbound track; silence long enough for `staff_script` by default).
    `hang_up_after_reply_s`: the caller hangs up that long after the bot's first answer has
    played (flux and agent modes), instead of staying on until the bot or `max_call_ms` ends
    the call."""
    if script is None and mode == "transcribe":
        script, staff_script = default_transcribe_scripts()
    script = script or (default_agent_script() if mode == "agent" else default_script())
    if faults:
        script.faults = [*script.faults, *faults]
    async with fakes(script, deepgram_options=deepgram_options, llm_options=llm_options) as (
        deepgram,
        llm,
        rest,
    ):
        # Nova sockets carry tags (call SID, side): the sides' own scripts. Flux and agent
        # calls get silent ones, so a transfer's transcription does not replay the bot's turns.
        deepgram.set_script("staff", staff_script or Script())
        if mode != "transcribe":
            deepgram.set_script("caller", Script())
        if mode == "transcribe" and audio is None:
            end_ms = max(
                (t.end_ms for t in [*script.turns, *(staff_script or Script()).turns]),
                default=0,
            )
            audio = caller_silence(end_ms + 1500)
        if agent_audio is None and staff_script is not None and staff_script.turns:
            agent_audio = caller_silence(max(t.end_ms for t in staff_script.turns) + 1500)
        os.environ[DEMO_LLM_KEY_ENV] = "demo-llm-key"
        config = _demo_config(config_path, llm.url)
        number = number or first_number(config, mode)
        sock = bind_loopback()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = settings_for_fakes(
            config,
            url,
            deepgram,
            rest,
            DEMO_AUTH_TOKEN,
            DEMO_DEEPGRAM_KEY,
            **(settings_overrides or {}),
        )
        app = create_app(settings)
        hangup = asyncio.Event()
        updates: asyncio.Queue[str] = asyncio.Queue()

        async def on_rest(call_sid: str, form: dict[str, str]) -> None:
            # Twilio ends the media stream when a call is hung up or redirected; TwiML that
            # forks the call again (a transfer that stays transcribed) opens a new stream, and
            # a <Number url> (a warm transfer's whisper) is fetched when the person answers.
            document = form.get("Twiml", "")
            if "<Start>" in document or "<Number " in document:
                updates.put_nowait(form["Twiml"])
            else:
                hangup.set()

        rest.on_request = on_rest
        async with serve_app(app, sock), asyncio.TaskGroup() as tasks:
            watcher = None
            if hang_up_after_reply_s is not None and mode != "transcribe":
                watcher = tasks.create_task(hang_up_after_reply(app, hangup, hang_up_after_reply_s))
            phrases = services_of(app).phrases
            if phrases is not None:  # the demo's greeting from the cache, as in production
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(phrases.ready.wait(), PHRASES_READY_S)
            caller = FakeTwilioCaller(url, auth_token=DEMO_AUTH_TOKEN)
            result = await caller.dial(
                number,
                audio=audio if audio is not None else caller_silence(max_call_ms),
                timeline=timeline,
                tail_ms=500 if mode == "transcribe" else None,  # people hang up; bots decide
                hangup=hangup,
                max_call_ms=max_call_ms,
                agent_audio=agent_audio or b"",
                twiml_updates=updates,
            )
            streams = 1 + sum(1 for f in result.forks if f.stream_url)
            parts: list[CallSummary] = []
            registry = services_of(app).registry
            for _ in range(300):  # the server finishes the call just after the socket closes
                parts = [s for s in registry.finished if s.call_sid == result.call_sid]
                if len(parts) >= streams:
                    break
                await asyncio.sleep(0.01)
            parts.sort(key=lambda s: s.started_at)
            if parts:
                await settle_insights(app, result.call_sid, parts[-1].profile)
            metrics = services_of(app).metrics.exposition()[0].decode()
            if watcher is not None:
                watcher.cancel()
        summary = parts[-1] if parts else None
        return OfflineCall(result, summary, mode, deepgram, rest, llm, parts=parts, metrics=metrics)


INSIGHTS_SETTLE_S = 10.0
PHRASES_READY_S = 5.0


async def settle_insights(app: Starlette, call_sid: str, profile_name: str) -> None:
    """Wait (bounded) for a demo call's insights, from the fake's /v1/read, before the app
    stops: left pending, they would be sent by a later `telephony serve` on the same database,
    to the real Deepgram if it has a key."""
    services = services_of(app)
    profile = services.config.current.profiles.get(profile_name)
    if profile is None or not profile.insights.enabled:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + INSIGHTS_SETTLE_S
    while loop.time() < deadline:
        row = (await insights_of(services.db, [call_sid])).get(call_sid)
        if row is not None and row["status"] != PENDING:
            return
        await asyncio.sleep(0.05)


def format_text(call: OfflineCall) -> str:
    out = [f"call {call.caller.call_sid} ({call.mode})"]
    for turn in call.as_json()["turns"]:
        who = f"{turn['role']:<6}"
        line = f"{turn['start_ms']:>6} ms  {who}  {turn['text']}"
        if turn["role"] == "bot":
            if turn["interrupted"]:
                line += f"\n{'':>18}heard: {turn['heard']!r} (interrupted)"
            if turn["latency_ms"] is not None:
                line += f"  [{turn['latency_ms']} ms]"
        out.append(line)
    for event in call.as_json()["events"]:
        detail = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("ms", "kind"))
        out.append(f"{event['ms']:>6} ms  event   {event['kind']}  {detail}".rstrip())
    for fork in call.caller.forks:  # what the fake Twilio played to the person who answered
        out += [f"whisper to {w.number}: {' '.join(w.said)!r}" for w in fork.whispers]
    out.append(f"ended: {call.as_json()['end_reason']}")
    return "\n".join(out)
