"""The process's pooled HTTP client for the LLM's streamed replies, sharded for scale."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

from telephony.http_backend import use_asyncio_backend

POOL_SHARDS = 16
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE_CONNECTIONS = 128


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS client context: httpx builds a new one per transport, parsing the
    whole CA bundle each time (~20 ms of CPU, on the event loop), and a pool has 16 of them."""
    return httpx.create_ssl_context()


def make_http_client() -> httpx.AsyncClient:
    """A pooled client sized for many concurrent calls; share one per process."""
    return httpx.AsyncClient(
        # read: the longest stall between two chunks once streaming (first token has its own).
        timeout=httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=10.0),
        transport=ShardedTransport(
            POOL_SHARDS,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS // POOL_SHARDS,
                max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS // POOL_SHARDS,
            ),
        ),
    )


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small connection pools behind one transport; a request goes to the least busy.

    httpcore's pool (1.0.x) does work quadratic in its connections on every request start and
    end (for each idle connection it counts all of them, and it polls every idle socket). With
    a few hundred calls' LLM streams in one pool that was the service's largest CPU cost
    (`telephony bench`); in small pools the term is negligible. Ties go to the lowest shard,
    so requests one after another still reuse one kept-alive connection.
    """

    def __init__(self, shards: int, **transport: Any) -> None:
        transport.setdefault("verify", tls_context())
        self.shards = [
            use_asyncio_backend(httpx.AsyncHTTPTransport(**transport)) for _ in range(shards)
        ]
        self._active = [0] * shards  # requests in flight per shard (until the body is closed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        active = self._active
        shard = active.index(min(active))
        active[shard] += 1
        try:
            response = await self.shards[shard].handle_async_request(request)
        except BaseException:
            active[shard] -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, self, shard)
        return response

    def _release(self, shard: int) -> None:
        self._active[shard] -= 1

    async def aclose(self) -> None:
        for transport in self.shards:
            await transport.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that tells its shard when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, owner: ShardedTransport, shard: int) -> None:
        self._stream = stream
        self._owner: ShardedTransport | None = owner
        self._shard = shard

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()  # no generator layer of our own per chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._owner is not None:
                self._owner._release(self._shard)
                self._owner = None
