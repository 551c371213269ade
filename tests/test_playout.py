"""Outbound playout: framing, pacing bound, marks after their audio, clear and the ledger."""

from __future__ import annotations

import asyncio
import contextlib

import orjson

from telephony.session.segments import Ledger, Segment, words_within
from telephony.twilio import messages as tm
from telephony.twilio.playout import Playout, SpanState


class Wire:
    """Records what the playout sends to Twilio, with send times."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, dict]] = []
        self.loop = asyncio.get_running_loop()

    async def send(self, text: str) -> None:
        self.sent.append((self.loop.time(), orjson.loads(text)))

    def events(self) -> list[str]:
        return [
            m["event"] if m["event"] != "mark" else "mark:" + m["mark"]["name"]
            for _, m in self.sent
        ]

    def frames(self) -> list[bytes]:
        return [
            tm.parse_outbound(orjson.dumps(m), "MZ1").payload
            for _, m in self.sent
            if m["event"] == "media"
        ]


@contextlib.asynccontextmanager
async def playing(wire: Wire, **kw):
    playout = Playout(wire.send, "MZ1", **kw)
    task = asyncio.create_task(playout.run())
    try:
        yield playout
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_idle(playout: Playout, wire: Wire, marks: int) -> None:
    for _ in range(500):
        if not playout._queue and sum(e.startswith("mark:") for e in wire.events()) >= marks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("playout did not drain")


async def test_frames_are_exact_and_marks_follow_their_audio() -> None:
    wire = Wire()
    async with playing(wire, lead_ms=1000) as playout:
        one, two = Segment("r1:s1", "Hello there."), Segment("r1:s2", "How can I help?")
        playout.add_audio(b"\x01" * 250, one)  # 1 whole frame + 90 bytes
        playout.add_audio(b"\x02" * 100)
        playout.end_segment(one)
        playout.add_audio(b"\x03" * 320, two)
        playout.end_segment(two)
        await wait_idle(playout, wire, marks=2)
    assert wire.events() == [
        *["media"] * 3,  # 350 bytes: two whole frames and a padded one
        "mark:r1:s1",
        *["media"] * 2,
        "mark:r1:s2",
    ]
    frames = wire.frames()
    assert all(len(f) == 160 for f in frames)
    assert frames[0] == b"\x01" * 160
    assert frames[1] == b"\x01" * 90 + b"\x02" * 70
    # The second segment starts on a fresh frame: the first one's tail was padded with silence.
    assert frames[2] == b"\x02" * 30 + b"\xff" * 130
    assert frames[3] == frames[4] == b"\x03" * 160
    assert (one.audio_ms, two.audio_ms) == (43, 40)
    assert one.state is SpanState.SENT  # sent, but not heard until Twilio echoes


async def test_never_more_than_the_lead_ahead_of_real_time() -> None:
    wire = Wire()
    async with playing(wire, lead_ms=100, batch_frames=3) as playout:
        seg = Segment("s", "x")
        start = asyncio.get_running_loop().time()
        playout.add_audio(b"\x05" * 160 * 30, seg)  # 600 ms
        playout.end_segment(seg)
        await wait_idle(playout, wire, marks=1)
    sent_frames = 0
    for t, msg in wire.sent:
        if msg["event"] != "media":
            continue
        sent_frames += 1
        # Frame n plays at start + n*20 ms; it may be sent at most lead (100 ms) earlier.
        # (Sending late is allowed by this check; only "too far ahead" is a defect.)
        plays_at = start + (sent_frames - 1) * 0.02
        assert t >= plays_at - 0.100 - 0.002, (sent_frames, t - start)
    assert sent_frames == 30


async def test_echo_marks_heard_and_clear_makes_the_rest_unheard() -> None:
    wire = Wire()
    ledger = Ledger()
    async with playing(wire, lead_ms=60, batch_frames=1) as playout:
        segs = [Segment(f"s{i}", f"sentence {i}.") for i in range(3)]
        ledger.segments.extend(segs)
        for seg in segs:
            playout.add_audio(b"\x07" * 160 * 5, seg)  # 100 ms each
            playout.end_segment(seg)
        for _ in range(200):
            if "mark:s0" in wire.events():
                break
            await asyncio.sleep(0.005)
        assert playout.on_mark("s0") is segs[0]
        assert playout.speaking
        unheard = await playout.clear()
        assert playout.on_mark("s1") is None  # Twilio returns cleared marks at once: ignored
        assert not playout.speaking
    assert [s.name for s in unheard] == ["s2", "s1"] or [s.name for s in unheard] == ["s1", "s2"]
    assert [s.state for s in segs] == [
        SpanState.PLAYED,
        SpanState.CLEARED,
        SpanState.CLEARED,
    ]
    assert wire.events()[-1] == "clear"
    assert ledger.heard_text() == "sentence 0."
    assert ledger.generated_text() == "sentence 0. sentence 1. sentence 2."


async def test_clear_with_nothing_playing_sends_nothing() -> None:
    wire = Wire()
    async with playing(wire) as playout:
        assert await playout.clear() == []
    assert wire.sent == []


async def test_partial_audio_without_a_segment_is_cleared_too() -> None:
    wire = Wire()
    async with playing(wire) as playout:
        seg = Segment("open", "still talking")
        playout.add_audio(b"\x09" * 100, seg)  # under a frame, segment not closed
        assert playout.speaking
        unheard = await playout.clear()
    assert unheard == [seg] and seg.state is SpanState.CLEARED
    assert wire.events() == ["clear"]


async def test_each_wake_sends_its_due_frames_and_mark_in_one_batch() -> None:
    """With `send_many`, a wake-up's frames (and a mark after them) leave in one call: the
    socket can write them as one TCP segment. Batches after the lead are `batch_frames` long."""
    wire = Wire()
    batches: list[list[str]] = []

    async def send_many(texts: list[str]) -> None:
        batches.append([orjson.loads(t)["event"] for t in texts])
        for text in texts:
            await wire.send(text)

    async with playing(wire, send_many=send_many, lead_ms=100, batch_frames=3) as playout:
        seg = Segment("r1:s1", "Hello.")
        playout.add_audio(b"\x01" * 160 * 20, seg)  # 400 ms
        playout.end_segment(seg)
        await wait_idle(playout, wire, marks=1)
    assert sum(len(b) for b in batches) == 21  # 20 frames and the mark
    assert batches[0] == ["media"] * 6  # the lead: frames 0..5 play within 100 ms
    # Then a wake per 3 frames (one woken late carries more): far fewer sends than messages.
    assert len(batches) <= 1 + 15 // 3 + 1
    assert all(len(b) >= 3 for b in batches[1:-1])
    assert batches[-1][-1] == "mark"  # the mark rides with the last frames
    assert wire.events()[-1] == "mark:r1:s1"


# --- marks inside a segment, and what a cut-off segment was heard of -------------------------


async def test_a_long_segment_is_marked_every_500_ms_and_echoes_count_its_audio() -> None:
    wire = Wire()
    async with playing(wire, lead_ms=5000) as playout:
        seg = Segment("r0:s0", "one two three four five six seven eight nine ten")
        for _ in range(13):  # 1300 ms arriving in 100 ms chunks
            playout.add_audio(b"\x04" * 800, seg)
        playout.end_segment(seg)
        await wait_idle(playout, wire, marks=3)
        assert [e for e in wire.events() if e.startswith("mark:")] == [
            "mark:r0:s0.1",  # after 500 ms
            "mark:r0:s0.2",  # after 1000 ms
            "mark:r0:s0",  # closing: after the last frame
        ]
        assert wire.events().index("mark:r0:s0.1") == 25  # right after frame 25
        assert playout.on_mark("r0:s0.1") is seg and seg.state is SpanState.SENT
        assert seg.played_ms == 500 and seg.heard() == ("one two three four", True)
        playout.on_mark("r0:s0.2")
        assert seg.played_ms == 1000
        playout.on_mark("r0:s0")
    assert seg.state is SpanState.PLAYED and seg.heard() == (seg.text, False)


async def test_a_clear_settles_the_segment_in_flight_by_what_had_played() -> None:
    """No echo will come for audio Twilio held at the clear: the playout knows how much of
    each segment it sent and when that plays, so what had played is sent minus still held."""

    class Clock:
        t = 100.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    wire = Wire()
    async with playing(wire, lead_ms=5000, clock=clock) as playout:
        first, second = Segment("s0", "first sentence."), Segment("s1", "and the second one")
        playout.add_audio(b"\x05" * 160 * 10, first)  # 200 ms
        playout.end_segment(first)
        playout.add_audio(b"\x06" * 160 * 40, second)  # 800 ms, its audio still coming
        await wait_idle(playout, wire, marks=2)  # all sent at t=100: plays 100.0 .. 101.0
        clock.t = 100.6  # 600 ms played: all of `first`, 400 of `second`
        unheard = await playout.clear()
    assert unheard == [first, second]
    assert (first.played_ms, first.estimated) == (200, True)
    assert first.heard() == ("first sentence.", False)
    assert (second.played_ms, second.estimated, second.complete) == (400, True, False)
    # Its audio was still arriving: the text's length at the default rate says how long it
    # all takes (18 chars x 65 ms = 1170 ms), so 400 ms is about a third of its words.
    assert second.heard() == ("and the", True)
    second.complete = True  # had its 800 ms been all of it: half of its 18 characters
    assert second.heard() == ("and the", True)


def test_a_segment_cut_at_its_source_is_heard_in_proportion_to_its_text() -> None:
    # The source died after 1 s of a text that takes 2 s: its mark echoed, half was heard.
    seg = Segment("s", "alpha beta gamma delta", audio_ms=1000, played_ms=1000)
    seg.complete, seg.state = False, SpanState.PLAYED
    assert seg.heard(ms_per_char=2000 / 22) == ("alpha beta", True)
    seg.complete = True  # whole: an echoed closing mark means all of it was heard
    assert seg.heard() == ("alpha beta gamma delta", False)


def test_words_within_counts_a_word_once_half_of_it_is_in() -> None:
    text = "We are open nine to five"
    assert words_within(text, 0) == ""
    assert words_within(text, 7) == "We are"  # "are" ends at 6
    assert words_within(text, 8.5) == "We are"  # "open" half in only at 9
    assert words_within(text, 9) == "We are open"
    assert words_within(text, 100) == text
