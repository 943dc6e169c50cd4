"""The Candor app with one extra route that fails, for tests that run it under a real server."""

from __future__ import annotations

from fastapi import FastAPI

from app.main import create_app


def create() -> FastAPI:
    app = create_app()

    @app.get("/test-only/boom", include_in_schema=False)
    def boom():
        raise RuntimeError("a route that fails")

    return app
