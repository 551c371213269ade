"""Conformance with Deepgram's own Python SDK (issue 19): our wire messages and our fakes are
checked against the SDK's pydantic models, the test oracle (telephony/ and routes/ never
import it).

`sdk_oracle` holds the models and the strict check; `capture` the offline calls and client
sessions whose traffic the tests read, run once per session (`conftest`). Then, one concept a
module: the oracle itself, (a) what our clients send, (b) what our fakes send, (c) Deepgram's
messages through our parsers, and the fakes' fidelity (messages, URL parameters).
"""
