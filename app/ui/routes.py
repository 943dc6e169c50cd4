"""The web UI at /ui/: server-rendered pages over the same data as the API, for one tenant.

Sign in with an API key (the session cookie of :mod:`app.ui.session`); then the datasets, a job's
live progress, its report (SVG drawn here) and its review queue, one item per screen, answered
with the keyboard. Every POST carries the session's CSRF token. Assets are this package's own
(no CDN); the pages allow scripts, styles and images from this origin only.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.deps import get_session
from app.core.problems import Problem
from app.core.security import tenant_for_key
from app.jobs import service as jobs_service
from app.jobs import states
from app.jobs.models import Job
from app.review import service as review_service
from app.review.schemas import ReviewCreate
from app.ui import service
from app.ui import session as ui_session

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["svg"] = Markup  # charts are escaped where they are drawn
router = APIRouter(prefix="/ui", include_in_schema=False)
DbDep = Annotated[Session, Depends(get_session)]
NONE = "__none__"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(HEADERS)
    return response


def _error(request: Request, status: int, title: str, detail: str, ui: ui_session.UiSession | None) -> HTMLResponse:
    return _page(request, "error.html", status=status, title=title, detail=detail, ui=ui)


def _to_signin() -> RedirectResponse:
    return RedirectResponse("/ui/login", status_code=303)


def _ui(request: Request, db: Session) -> ui_session.UiSession | None:
    ui = ui_session.read(db, request.cookies.get(ui_session.COOKIE))
    db.commit()
    return ui


def _job(db: Session, ui: ui_session.UiSession, job_id: str) -> Job | None:
    jid = service.job_uuid(job_id)
    return None if jid is None else jobs_service.repo.get_job(db, ui.tenant.id, jid)


def _succeeded_job(request: Request, db: Session, ui: ui_session.UiSession, job_id: str, what: str) -> Job | Response:
    """The tenant's succeeded job, or the error page: 404 for no such job, 409 while ``what`` (the
    report, review) waits for it to succeed."""
    job = _job(db, ui, job_id)
    if job is None:
        return _error(request, 404, "Not found", f"job {job_id} does not exist", ui)
    if job.state != states.SUCCEEDED:
        return _error(
            request, 409, "Job not finished", f"job {job.id} is {job.state}; {what} comes once it succeeds", ui
        )
    return job


@router.get("/", response_class=HTMLResponse)
def home(request: Request, db: DbDep):
    return RedirectResponse("/ui/datasets" if _ui(request, db) else "/ui/login", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def signin_form(request: Request):
    nonce = secrets.token_urlsafe(16)
    response = _page(request, "login.html", csrf=ui_session.signin_token(nonce), error=None, ui=None)
    response.set_cookie(ui_session.PRE_COOKIE, nonce, **ui_session.cookie_args(600))
    return response


@router.post("/login", response_class=HTMLResponse)
async def signin(request: Request, db: DbDep, key: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = ""):
    if not ui_session.check_signin(request.cookies.get(ui_session.PRE_COOKIE), csrf):
        return _error(request, 403, "Forbidden", "the sign-in form expired or did not come from this site", None)
    tenant = await run_in_threadpool(tenant_for_key, db, key.strip()[:200], 0.0)
    db.commit()
    if tenant is None:
        nonce = secrets.token_urlsafe(16)
        response = _page(
            request, "login.html", status=401, csrf=ui_session.signin_token(nonce), error="unknown or revoked API key"
        )
        response.set_cookie(ui_session.PRE_COOKIE, nonce, **ui_session.cookie_args(600))
        return response
    token = await run_in_threadpool(ui_session.issue, db, tenant)
    await run_in_threadpool(db.commit)
    response = RedirectResponse("/ui/datasets", status_code=303)
    hours = ui_session.get_settings().ui_session_hours
    response.set_cookie(ui_session.COOKIE, token, **ui_session.cookie_args(int(hours * 3600)))
    response.delete_cookie(ui_session.PRE_COOKIE, path="/ui")
    return response


@router.post("/logout")
def signout(request: Request, db: DbDep, csrf: Annotated[str, Form()] = ""):
    ui = _ui(request, db)
    if ui is None:
        return _to_signin()
    if not ui.check_csrf(csrf):
        return _error(request, 403, "Forbidden", "missing or wrong CSRF token", ui)
    ui_session.sign_out(db, ui)
    db.commit()
    response = _to_signin()
    response.delete_cookie(ui_session.COOKIE, path="/ui")
    return response


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, db: DbDep):
    ui = _ui(request, db)
    if ui is None:
        return _to_signin()
    rows = service.datasets(db, ui.tenant)
    db.commit()
    return _page(request, "datasets.html", ui=ui, datasets=rows)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, db: DbDep, job_id: str):
    ui = _ui(request, db)
    if ui is None:
        return _to_signin()
    job = _job(db, ui, job_id)
    if job is None:
        return _error(request, 404, "Not found", f"job {job_id} does not exist", ui)
    out = jobs_service.job_out(db, job)
    db.commit()
    return _page(request, "job.html", ui=ui, job=out, terminal=out.state in states.TERMINAL)


@router.get("/jobs/{job_id}/status")
def job_status(request: Request, db: DbDep, job_id: str):
    """The job's state and progress for the job page's polling (same session as the pages)."""
    ui = _ui(request, db)
    if ui is None:
        return JSONResponse({"detail": "sign in"}, status_code=401, headers=HEADERS)
    job = _job(db, ui, job_id)
    if job is None:
        return JSONResponse({"detail": f"job {job_id} does not exist"}, status_code=404, headers=HEADERS)
    out = jobs_service.job_out(db, job)
    db.commit()
    body = {"state": out.state, "terminal": out.state in states.TERMINAL, "error": out.error}
    return JSONResponse(body | {"progress": out.progress.model_dump(mode="json")}, headers=HEADERS)


@router.get("/jobs/{job_id}/report", response_class=HTMLResponse)
def report_page(request: Request, db: DbDep, job_id: str):
    ui = _ui(request, db)
    if ui is None:
        return _to_signin()
    job = _succeeded_job(request, db, ui, job_id, "its report")
    if isinstance(job, Response):
        return job
    data = service.report(db, job)
    db.commit()
    return _page(request, "report.html", ui=ui, job=job, r=data)


@router.get("/jobs/{job_id}/review", response_class=HTMLResponse)
def review_page(request: Request, db: DbDep, job_id: str, pos: int = 0, done: str | None = None):
    ui = _ui(request, db)
    if ui is None:
        return _to_signin()
    job = _succeeded_job(request, db, ui, job_id, "review")
    if isinstance(job, Response):
        return job
    item = service.review_item(db, job, min(max(pos, 0), 10**9))
    db.commit()
    return _page(request, "review.html", ui=ui, job=job, item=item, done=(done or "")[:255], none_choice=NONE)


@router.post("/jobs/{job_id}/review", response_class=HTMLResponse)
def review_decide(
    request: Request,
    db: DbDep,
    job_id: str,
    item_id: Annotated[str, Form()] = "",
    choice: Annotated[str, Form()] = "",
    pos: Annotated[int, Form()] = 0,
    csrf: Annotated[str, Form()] = "",
):
    ui = _ui(request, db)
    if ui is None:
        return _to_signin()
    if not ui.check_csrf(csrf):
        return _error(request, 403, "Forbidden", "missing or wrong CSRF token; reload the page", ui)
    job = _job(db, ui, job_id)
    if job is None:
        return _error(request, 404, "Not found", f"job {job_id} does not exist", ui)
    if not item_id or not choice:
        return _error(request, 422, "Invalid review", "choose a candidate, none of these, or skip", ui)
    body = ReviewCreate(
        item_id=item_id[:255], label=None if choice == NONE else choice[:255], none_of_these=choice == NONE
    )
    try:
        review_service.decide(db, ui.tenant, job.id, body)
    except Problem as p:
        db.rollback()
        return _error(request, p.status, p.title, p.detail or p.title, ui)
    db.commit()
    query = urlencode({"pos": max(pos, 0), "done": item_id[:255]})
    return RedirectResponse(f"/ui/jobs/{job.id}/review?{query}", status_code=303)


@router.get("/jobs/{job_id}/images/{item_seq}")
def item_image(request: Request, db: DbDep, job_id: str, item_seq: Annotated[int, PathParam(ge=1, le=2**63 - 1)]):
    ui = _ui(request, db)
    if ui is None:
        return Response(status_code=401)
    job = _job(db, ui, job_id)
    data = None if job is None else service.image(db, ui.tenant, job, item_seq)
    db.commit()
    if data is None:
        return Response(status_code=404)
    headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=service.media_type(data), headers=headers)
