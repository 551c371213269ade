"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from routes.state import services_of, started_services

CONFIG_ERROR = "config error"


async def healthz(request: Request) -> JSONResponse:
    services = services_of(request.app)
    store = services.config
    return JSONResponse(
        {
            "status": "ok",
            "live_calls": len(services.registry.live),
            # Answered here, media socket not arrived (yet): they count against capacity.
            "expected_calls": len(services.registry.reserved),
            "draining": services.drain.draining,
            "config_version": store.version,
            # Anonymous: only whether the last reload failed. The errors themselves are for
            # admins (/admin) and the log.
            "config_error": CONFIG_ERROR if store.last_error else None,
        }
    )


async def readyz(request: Request) -> JSONResponse:
    """Not ready while draining, or while the transcript store is failing: a load balancer
    then sends new calls elsewhere; calls in progress go on. Why the store fails is in the
    ERROR log and on /metrics, not here (a public endpoint)."""
    services = services_of(request.app)
    store_ok = services.transcripts.ready
    ready = store_ok and not services.drain.draining
    body = {"ready": ready, "draining": services.drain.draining, "store_ok": store_ok}
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """The app's own registry (telephony/metrics.py), in the format the scraper accepts."""
    services = started_services(request.app)
    if services is None:  # before the lifespan has started the store
        return PlainTextResponse("metrics not available yet\n", status_code=503)
    body, content_type = services.metrics.exposition(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
