"""The fakes' messages are Deepgram's (issue 19 item 7).

Nova's words, metadata and punctuation, Nova's Error variant, and Aura's errors, which are
close frames.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from deepgram.listen.v1 import types as nova_t

from telephony.deepgram import messages as dm
from telephony.deepgram.connection import open_socket
from telephony.deepgram.listen import ListenClient, ListenOptions
from telephony.deepgram.socket import DeepgramClosed
from telephony.deepgram.speak import SpeakClient
from telephony.sim.deepgram_server import FakeDeepgram, Fault, Script, ScriptedTurn
from tests.conformance.capture import BOGUS, FRAME, KEY, Wire, collect_events, until
from tests.conformance.sdk_oracle import conform


async def test_fake_nova_words_metadata_and_punctuation_are_novas(wire: Wire) -> None:
    """Results carry metadata.model_uuid and model_info (name, version, arch) and, with a
    diarizer, diarize_info; `word` is bare and lowercase, `punctuated_word` (punctuate or
    smart_format on) is the formatted word, and the transcript is made of those."""
    script = Script(turns=[ScriptedTurn(100, 900, "Hi, I'd like Acme's offer.")])
    for query, punctuated in (
        (ListenOptions(diarize=True), True),
        (ListenOptions(punctuate=False, smart_format=False), False),
    ):
        async with FakeDeepgram(api_key=KEY, script=script) as fake:
            client = ListenClient(fake.url, KEY, query)
            await client.connect()
            events: list[Any] = []
            reader = asyncio.create_task(collect_events(client.events(), events))
            for i in range(60):
                client.send_audio(i * 20, FRAME)
            final = await until(events, lambda e: isinstance(e, dm.Results) and e.is_final)
            await client.finish()
            await reader
        assert [w.word for w in final.words] == ["hi", "i'd", "like", "acme's", "offer"]
        if punctuated:
            assert [w.punctuated_word for w in final.words] == [
                "Hi,",
                "I'd",
                "like",
                "Acme's",
                "offer.",
            ]
            assert final.transcript == "Hi, I'd like Acme's offer."
        else:
            assert all(w.punctuated_word is None for w in final.words)
            assert final.transcript == "hi i'd like acme's offer"
        metadata = final.metadata or {}
        assert set(metadata["model_info"]) == {"name", "version", "arch"}
        assert metadata["model_info"]["name"] == "nova-3" and metadata["model_uuid"]
        assert ("diarize_info" in metadata) is punctuated  # diarize only in the first run
        raw = orjson.loads(dm.encode(final))
        assert conform(nova_t.ListenV1Results, raw) == []
    # The transcription engine stores the punctuated words (the offline transcribe call).
    caller = [t["text"] for t in wire.calls["nova"].as_json()["turns"] if t["role"] == "caller"]
    assert caller[0] == "Hi, I'd like to move my delivery."


async def test_fake_nova_error_has_a_variant() -> None:
    async with FakeDeepgram(api_key=KEY) as fake:
        ws = await open_socket(f"{fake.url}/v1/listen?model=nova-3", KEY)
        await ws.send(BOGUS)
        raw = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.close()
    assert raw["variant"] == "SchemaError" and raw["message"] == BOGUS
    assert conform(nova_t.ListenV1Error, raw) == []
    error = dm.parse_listen_server(orjson.dumps(raw))
    assert isinstance(error, dm.ListenError) and error.variant == "SchemaError"


async def test_fake_aura_errors_are_close_frames_and_the_client_raises_on_them() -> None:
    """Aura sends no JSON Error (the SDK has no Speak Error): an error is the close frame."""
    script = Script(faults=[Fault("speak", 0, "error", reason="DATA-0001")])
    async with FakeDeepgram(api_key=KEY, script=script) as fake:
        client = SpeakClient(fake.url, KEY, "aura-2-thalia-en")
        await client.connect()
        with pytest.raises(DeepgramClosed) as info:
            async with asyncio.timeout(5):
                async for _ in client.events():
                    pass
        log = fake.logs("speak")[0]
        await log.wait_closed()
    assert (info.value.code, info.value.reason) == (1011, "DATA-0001")
    assert log.sent_kinds() == ["json:Metadata"] and log.close_code == 1011
