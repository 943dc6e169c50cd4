"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from app import docs, health, openapi
from app.classifiers.routes import router as classifiers_router
from app.core import problems
from app.core.limits import RequestGuard
from app.core.settings import get_settings
from app.datasets.routes import router as datasets_router
from app.jobs.routes import router as jobs_router
from app.labelstudio.routes import router as labelstudio_router
from app.review.routes import router as review_router
from app.ui.routes import STATIC as UI_STATIC
from app.ui.routes import router as ui_router
from app.webhooks.routes import router as webhooks_router

DESCRIPTION = """Clean image annotations given as candidate label sets.

POST a dataset and its items (each image with the labels it might be), start a job, poll it,
download the cleaned labels, and call `/predict` on the adapted classifier. Authenticate with
`Authorization: Bearer <key>` (create keys with `candor keys create --tenant NAME`). Every error is
`application/problem+json` (RFC 9457)."""


def _operation_id(route: APIRoute) -> str:
    """The route function's name: `create_dataset`, `start_job`, `get_labels`, ... (unique)."""
    return route.name


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Embedded mode has no Celery beat: the reaper runs as a thread of this process."""
    reaper_thread = None
    if get_settings().embedded:
        from app.jobs.reaper import ReaperThread

        reaper_thread = ReaperThread()
        reaper_thread.start()
    yield
    if reaper_thread is not None:
        reaper_thread.stop()


def create_app() -> FastAPI:
    app = FastAPI(
        title="Candor",
        version="1",
        description=DESCRIPTION,
        generate_unique_id_function=_operation_id,
        separate_input_output_schemas=False,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)
    openapi.install(app)
    docs.install(app)
    app.add_middleware(RequestGuard)
    app.include_router(health.router)
    app.include_router(datasets_router)
    app.include_router(jobs_router)
    app.include_router(review_router)
    app.include_router(classifiers_router)
    app.include_router(webhooks_router)
    app.include_router(labelstudio_router)
    app.include_router(ui_router)  # the web UI at /ui/ (not in the OpenAPI document)
    app.mount("/ui/static", StaticFiles(directory=UI_STATIC), name="ui-static")
    return app
