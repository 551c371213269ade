"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def healthz(request: Request) -> JSONResponse:
    registry = request.app.state.registry
    store = request.app.state.config
    return JSONResponse(
        {
            "status": "ok",
            "live_calls": len(registry.live),
            "config_version": store.version,
            "config_error": store.last_error,
        }
    )


async def readyz(request: Request) -> JSONResponse:
    ready = not request.app.state.draining
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
