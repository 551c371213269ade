"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


async def healthz(request: Request) -> JSONResponse:
    registry = request.app.state.registry
    store = request.app.state.config
    return JSONResponse(
        {
            "status": "ok",
            "live_calls": len(registry.live),
            "draining": request.app.state.draining,
            "config_version": store.version,
            "config_error": store.last_error,
        }
    )


async def readyz(request: Request) -> JSONResponse:
    ready = not request.app.state.draining
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """The app's own registry (telephony/metrics.py), in the format the scraper accepts."""
    exported = getattr(request.app.state, "metrics", None)
    if exported is None:  # before the lifespan has started the store
        return PlainTextResponse("metrics not available yet\n", status_code=503)
    body, content_type = exported.exposition(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
