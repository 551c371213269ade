"""What a warm transfer's whisper costs, against the fakes (a benchmark, not a test).

Per kind of transfer (a plain `<Dial>`, a template whisper, an LLM whisper with the fake LLM's
first token at 100 ms), over a few calls: the time from the handover line's last mark echo to
Twilio receiving the transfer's TwiML (what the caller waits on, in silence, before the ring),
and from Twilio taking that TwiML to the whisper's answer (the fake Twilio's POST to
/twilio/whisper for the new leg: what the person waits on after answering).
Run: .venv/bin/python scripts/whisper_latency.py [--calls 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from telephony.demo import run_offline_call
from telephony.sim.deepgram_server import Script, ScriptedTurn

NUMBERS = """\
numbers:
  "+15550001000": cold
  "+15550002000": template
  "+15550003000": llm
profiles:
  cold:
    mode: flux
    transfer_number: "+15557770000"
    responder:
      type: scripted
      rules: [{pattern: "human", reply: "Transferring you now.", action: transfer}]
      fallback: "Sorry?"
  template:
    mode: flux
    transfer: {number: "+15557770000", whisper: true}
    responder:
      type: scripted
      rules: [{pattern: "human", reply: "Transferring you now.", action: transfer}]
      fallback: "Sorry?"
  llm:
    mode: flux
    transfer: {number: "+15557770000", whisper: true, whisper_source: llm, whisper_llm_ms: 800}
    responder: {type: llm, base_url: "https://llm.example.com/v1", model: m, api_key_env: K,
                system_prompt: "Be brief."}
"""
TURNS = [ScriptedTurn(start_ms=800, end_ms=1600, text="I want a refund, a human please")]


async def one(config: Path, number: str) -> tuple[float, float | None]:
    result = await run_offline_call(
        number=number,
        script=Script(turns=list(TURNS)),
        config_path=config,
        deepgram_options={"speak_ms_per_char": 30},
        llm_options={
            "first_token_delay_ms": 100,
            "tokens_per_s": 200,
            "replies": [
                ("^Caller:", "Wants a refund and a person."),
                ("human", "Transferring you now."),
            ],
            "tools": [("human", "transfer_call")],
        },
        max_call_ms=10_000,
    )
    events = result.caller.events
    last_echo = max(e.ms for e in events if e.kind == "mark_echo" and "cleared" not in e.detail)
    update = next(e.ms for e in events if e.kind == "stop")  # the REST update ends the stream
    fork = result.caller.forks[0] if result.caller.forks else None
    whisper = next((e.ms for e in fork.events if e.kind == "whisper"), None) if fork else None
    return update - last_echo, whisper


async def main(calls: int) -> None:
    config = Path(tempfile.mkdtemp()) / "numbers.yaml"
    config.write_text(NUMBERS)
    report = {}
    for kind, number in (
        ("cold", "+15550001000"),
        ("template", "+15550002000"),
        ("llm", "+15550003000"),
    ):
        runs = [await one(config, number) for _ in range(calls)]
        waits = [w for w, _ in runs]
        answers = [a for _, a in runs if a is not None]
        report[kind] = {
            "goodbye_to_dial_ms_p50": round(statistics.median(waits), 1),
            "goodbye_to_dial_ms_max": round(max(waits), 1),
            "whisper_answer_ms_p50": round(statistics.median(answers), 1) if answers else None,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5)
    asyncio.run(main(parser.parse_args().calls))
