"""Candor as a Label Studio ML backend: one classifier answers a Label Studio project's /setup,
/predict and /webhook (the protocol of label-studio-ml-backend's api.py).

Auth: Label Studio's ML backend connection sends HTTP basic auth; the Candor API key is the
password (any user name). ``Authorization: Bearer <key>`` works as well.

Task images: a task's data holds a URL (``/data/upload/...`` relative to Label Studio, or an
absolute one). They are fetched with the Label Studio URL and token of the project's connection,
which /setup stores from the connection's extra params (``{"url", "token", "train"}``) or from
the ``hostname``/``access_token`` older Label Studio versions send; the token encrypted under
``CANDOR_LABELSTUDIO_TOKEN_KEYS`` when set (:mod:`app.labelstudio.tokens`). The token goes only to Label
Studio's own origin. Every fetch connects only to addresses the webhook rules allow
(:mod:`app.webhooks.addresses`; loopback and private ones with ``CANDOR_LABELSTUDIO_ALLOW_PRIVATE``)
and follows no redirect.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from urllib.parse import urljoin, urlsplit

import httpcore
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.classifiers import service as classifiers
from app.classifiers.models import ClassifierRow
from app.core.problems import Problem, not_found
from app.core.security import TenantRef, tenant_for_key
from app.core.settings import get_settings
from app.datasets import repository as datasets_repo
from app.datasets import service as datasets
from app.datasets.models import Item
from app.datasets.service import Incoming
from app.imports.labelstudio import (
    TOOL,
    LabelConfig,
    LabelConfigError,
    annotator,
    check_classes,
    parse_label_config,
    task_annotations,
)
from app.jobs import repository as jobs_repo
from app.jobs import service as jobs
from app.jobs.leases import LIVE
from app.jobs.models import Job
from app.jobs.schemas import JobCreate
from app.labelstudio.models import LabelStudioConnection
from app.labelstudio.schemas import (
    LabelStudioChoicesResult,
    LabelStudioPredictions,
    LabelStudioPredictRequest,
    LabelStudioSetup,
    LabelStudioTaskPrediction,
    LabelStudioWebhookAnswer,
)
from app.labelstudio.tokens import TokenError, seal, unseal
from app.ml.data import InputError
from app.ml.text import show
from app.ml.votes import CandidatePolicy, derive_candidates, validate_annotations
from app.webhooks.addresses import RefusedAddress, check_url
from app.webhooks.delivery import GuardedBackend

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "START_TRAINING")
USER_AGENT = "Candor-LabelStudio/1"


# ---- auth ----------------------------------------------------------------------------------------
def _unauthorized(detail: str) -> Problem:
    p = Problem(401, "Unauthorized", detail)
    p.headers = {"WWW-Authenticate": 'Basic realm="Candor", Bearer'}
    return p


def api_key(authorization: str | None) -> str:
    """The Candor API key of a basic-auth (the password) or bearer Authorization header."""
    if not authorization:
        raise _unauthorized(
            "send the Candor API key as the basic-auth password of the Label Studio connection "
            "(or 'Authorization: Bearer <key>')"
        )
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise _unauthorized("the basic-auth credentials are not valid base64 of user:password") from exc
        return decoded.partition(":")[2]
    raise _unauthorized("use basic auth (the API key as the password) or a bearer API key")


def authenticate(session: Session, authorization: str | None) -> TenantRef:
    key = api_key(authorization)
    try:
        tenant = tenant_for_key(session, key, get_settings().auth_cache_seconds)
    except BaseException:
        session.rollback()
        raise
    session.commit()
    if tenant is None:
        raise _unauthorized("unknown or revoked API key")
    return tenant


# ---- setup ---------------------------------------------------------------------------------------
def project_id(project: object) -> str | None:
    """Label Studio's project id from its ``"<id>.<timestamp>"`` (or a bare id)."""
    if project is None or isinstance(project, bool):
        return None
    text = str(project).split(".", 1)[0].strip()
    return text[:64] or None


def _config(text: str | None, classes: list[str], what: str) -> LabelConfig:
    if not text:
        raise Problem(422, "Invalid request", f"{what} is missing: send the project's labeling config")
    try:
        config = parse_label_config(text)
        check_classes(config, classes)
    except LabelConfigError as exc:
        raise Problem(422, "Invalid label config", f"{what}: {exc} (the classifier's classes)") from exc
    return config


def _extra(body: LabelStudioSetup) -> dict:
    extra = body.extra_params
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError as exc:
            raise Problem(422, "Invalid request", "extra_params is not a JSON object") from exc
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise Problem(422, "Invalid request", "extra_params is not a JSON object")
    return extra


def _text(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 2000:
        raise Problem(422, "Invalid request", f"extra_params.{name} must be a string of at most 2000 characters")
    return value


def setup(session: Session, tenant: TenantRef, classifier_id: uuid.UUID, body: LabelStudioSetup) -> str:
    """Check the project's labeling config against the classifier, remember the project's Label
    Studio URL and token; the classifier's version."""
    _, version, clf = classifiers.owned_classifier(session, tenant, classifier_id)
    _config(body.schema_, list(clf.classes), "schema")
    extra = _extra(body)
    url = _text(extra.get("url") or extra.get("label_studio_url"), "url")
    token = _text(extra.get("token") or extra.get("access_token"), "token")
    train = extra.get("train", False)
    if not isinstance(train, bool):
        raise Problem(422, "Invalid request", "extra_params.train must be true or false")
    allow_private = get_settings().labelstudio_allow_private
    if url is not None:
        try:
            check_url(url, allow_private)
        except RefusedAddress as exc:
            raise Problem(422, "Invalid request", f"Label Studio URL {show(url, 200)}: {exc}") from exc
    elif isinstance(body.hostname, str) and body.hostname:
        # the hostname Label Studio sends by itself (often its default, localhost): used when allowed,
        # never a reason to refuse the connection
        try:
            check_url(body.hostname, allow_private)
            url, token = body.hostname[:2000], token or body.access_token
        except RefusedAddress:
            pass
    project = project_id(body.project)
    if project is not None:
        conn = _connection(session, tenant, classifier_id, project)
        if conn is None:
            conn = LabelStudioConnection(tenant_id=tenant.id, classifier_id=classifier_id, project=project)
            session.add(conn)
        if url and conn.url and _origin(url) != _origin(conn.url) and not token:
            # a stored token goes only to the Label Studio it was given for: moving the connection
            # elsewhere takes a new token
            raise Problem(
                422,
                "Invalid request",
                f"project {project} is connected to another Label Studio; give its token with the new URL",
            )
        conn.url, conn.token, conn.train = url or conn.url, seal(token) if token else conn.token, train
        session.flush()
    session.commit()
    return version


def _connection(
    session: Session, tenant: TenantRef, classifier_id: uuid.UUID, project: str | None
) -> LabelStudioConnection | None:
    if project is None:
        return None
    return session.scalar(
        select(LabelStudioConnection).where(
            LabelStudioConnection.tenant_id == tenant.id,
            LabelStudioConnection.classifier_id == classifier_id,
            LabelStudioConnection.project == project,
        )
    )


# ---- task images ---------------------------------------------------------------------------------
class FetchError(Exception):
    """A task image that could not be fetched; the message says why in plain words."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _request(method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
    settings = get_settings()
    limit = settings.labelstudio_timeout_seconds
    timeout = {"connect": limit, "read": limit, "write": limit, "pool": limit}
    deadline = time.monotonic() + limit  # for the whole answer: a server that drips bytes is cut off
    sent = [("user-agent", USER_AGENT), *headers.items()]
    try:
        check_url(url, settings.labelstudio_allow_private)  # and again on the very address connected to
        with (
            httpcore.ConnectionPool(network_backend=GuardedBackend(settings.labelstudio_allow_private)) as pool,
            pool.stream(method, url, headers=sent, content=body, extensions={"timeout": timeout}) as response,
        ):
            raw = bytearray()
            for chunk in response.iter_stream():
                raw += chunk
                if len(raw) > settings.max_image_bytes:
                    raise FetchError(f"it is larger than {settings.max_image_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"it did not arrive within {limit:g} s")
            return response.status, bytes(raw)
    except RefusedAddress as exc:
        raise FetchError(f"refused: {exc}") from exc
    except httpcore.TimeoutException as exc:
        raise FetchError(f"no answer within {limit:g} s") from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
        raise FetchError(str(exc) or type(exc).__name__) from exc


def _auth_header(conn: LabelStudioConnection) -> dict[str, str]:
    """Label Studio's Authorization for the connection's token: a personal access token (a JWT) is
    exchanged for an access token first; a legacy token is sent as it is."""
    try:
        token = unseal(conn.token or "")
    except TokenError as exc:
        raise FetchError(str(exc)) from exc
    if token.count(".") != 2:
        return {"authorization": f"Token {token}"}
    url = urljoin(conn.url.rstrip("/") + "/", "api/token/refresh")
    body = json.dumps({"refresh": token}).encode()
    status, raw = _request("POST", url, {"content-type": "application/json"}, body)
    try:
        access = json.loads(raw)["access"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        access = None
    if not isinstance(access, str):
        raise FetchError(f"Label Studio refused the connection's personal access token (HTTP {status})")
    return {"authorization": f"Bearer {access}"}


class ImageFetcher:
    """Fetches the task images of one /predict call, with the connection's URL and token."""

    def __init__(self, conn: LabelStudioConnection | None):
        self.conn = conn if conn is not None and conn.url else None
        self._auth: dict[str, str] | None = None

    def __call__(self, ref: str) -> bytes:
        if ref.startswith("data:"):
            head, _, payload = ref.partition(",")
            if not head.endswith(";base64"):
                raise FetchError("a data: URL must be base64")
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FetchError("its data: URL is not valid base64") from exc
        parts = urlsplit(ref)
        if not parts.scheme:
            if self.conn is None:
                raise FetchError(
                    "it is relative to Label Studio, whose URL Candor does not know: set the connection's extra "
                    'params to {"url": LABEL_STUDIO_URL, "token": TOKEN} and save it again'
                )
            ref = urljoin(self.conn.url.rstrip("/") + "/", ref.lstrip("/"))
        elif parts.scheme not in ("http", "https"):
            raise FetchError("only http(s), data: and Label Studio URLs are read")
        headers: dict[str, str] = {}
        if self.conn is not None and self.conn.token and _origin(ref) == _origin(self.conn.url):
            if self._auth is None:
                self._auth = _auth_header(self.conn)
            headers = self._auth
        status, raw = _request("GET", ref, headers)
        if status != 200:
            raise FetchError(f"HTTP {status}" + (" (check the connection's token)" if status in (401, 403) else ""))
        return raw


# ---- predict -------------------------------------------------------------------------------------
def predict(
    session: Session, tenant: TenantRef, classifier_id: uuid.UUID, body: LabelStudioPredictRequest
) -> LabelStudioPredictions:
    """One prediction per task: the classifier's choice among the config's choices."""
    _, version, clf = classifiers.owned_classifier(session, tenant, classifier_id)
    config = _config(body.label_config, list(clf.classes), "label_config")
    conn = _connection(session, tenant, classifier_id, project_id(body.project))
    session.commit()  # no transaction stays open while images are fetched
    fetch = ImageFetcher(conn)
    blobs = []
    budget, total = get_settings().max_json_bytes, 0  # what a /predict body may carry, fetched or sent
    for n, task in enumerate(body.tasks):
        tid = task.get("id")
        name = f"task {tid}" if isinstance(tid, int) and not isinstance(tid, bool) else f"task {n} of the request"
        data = task.get("data")
        ref = data.get(config.data_key) if isinstance(data, dict) else None
        if not isinstance(ref, str) or not ref:
            raise Problem(422, "Invalid task", f"{name}: its data has no {show(config.data_key)} image URL")
        try:
            blobs.append(fetch(ref))
        except FetchError as exc:
            raise Problem(422, "Task image not fetched", f"{name}: image {show(ref, 200)}: {exc}") from exc
        total += len(blobs[-1])
        if total > budget:
            raise Problem(
                413,
                "Request too large",
                f"{name}: the tasks' images add up to more than {budget} bytes, the most one prediction request "
                "takes; send fewer tasks per request",
            )
    if not blobs:
        return LabelStudioPredictions(results=[])
    answer = classifiers.predict(session, tenant, classifier_id, blobs, 1, list(config.choices))
    return LabelStudioPredictions(
        results=[
            LabelStudioTaskPrediction(
                result=[
                    LabelStudioChoicesResult(
                        from_name=config.from_name, to_name=config.to_name, value={"choices": [p.top[0].label]}
                    )
                ],
                score=p.top[0].p,
                model_version=version,
            )
            for p in answer.predictions
        ]
    )


# ---- webhook -------------------------------------------------------------------------------------
PULL_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


def webhook(session: Session, tenant: TenantRef, classifier_id: uuid.UUID, body: dict) -> LabelStudioWebhookAnswer:
    """An annotation event of a project whose connection has ``train`` on: the event's annotation
    enters the classifier's dataset first (:func:`pull_annotation`), then a new job starts on the
    dataset with the classifier's job config (not when one is queued or running: that one is named,
    and the next event's job sees the annotation)."""
    action = body.get("action")
    if action not in TRAIN_EVENTS:
        return LabelStudioWebhookAnswer(status="Unknown event")
    row = classifiers.require_classifier(session, tenant, classifier_id)
    project = body.get("project")
    project_key = project_id(project.get("id") if isinstance(project, dict) else project)
    conn = _connection(session, tenant, classifier_id, project_key)
    if conn is None or not conn.train:
        session.commit()
        return LabelStudioWebhookAnswer(status="ok")
    item = None
    if action in PULL_EVENTS:
        item = pull_annotation(session, tenant, row.dataset_id, conn, body)
    # one event at a time per dataset, so two events never start two jobs
    datasets_repo.lock_dataset(session, tenant.id, row.dataset_id, shared=False)
    live = jobs_repo.live_jobs(session, row.dataset_id, LIVE)
    if live:
        session.commit()
        return LabelStudioWebhookAnswer(status="ok", job_id=str(live[0]), item=item)
    config = session.scalar(select(Job.config).where(Job.id == row.job_id))
    job = jobs.create_job(session, tenant, JobCreate(dataset_id=row.dataset_id, config=config or {}))
    session.commit()
    return LabelStudioWebhookAnswer(status="ok", job_id=str(job.id), item=item)


def _event_config(body: dict, item: Item | None, classes: list[str]) -> LabelConfig | None:
    """The labeling config of the event's project (Label Studio sends it with the project), else
    the <Choices> and <Image> names the item was imported with; None when neither is there."""
    project = body.get("project")
    text = project.get("label_config") if isinstance(project, dict) else None
    if isinstance(text, str) and text.strip():
        return _config(text, classes, "project.label_config")
    src = item.source if item is not None and isinstance(item.source, dict) else {}
    if src.get("tool") == TOOL and isinstance(src.get("from_name"), str):
        return LabelConfig(src["from_name"], str(src.get("to_name", "image")), "image", tuple(classes))
    return None


def pull_annotation(
    session: Session, tenant: TenantRef, dataset_id: uuid.UUID, conn: LabelStudioConnection, body: dict
) -> str:
    """Put an ANNOTATION_CREATED/UPDATED event's annotation into the dataset: on the item of the
    task's id, the annotator's vote is replaced (or added; a cancelled annotation, or one without a
    choice, takes it away) and the candidate set derived again by the dataset's policy; a task
    the dataset does not hold yet becomes a new item, its image fetched from Label Studio like
    /predict's. What happened: ``updated``, ``created``, ``unchanged`` or ``skipped: <why>``.
    Problem 422 naming the task for an event Candor cannot read."""
    task, annotation = body.get("task"), body.get("annotation")
    tid = task.get("id") if isinstance(task, dict) else None
    if not isinstance(tid, int) or isinstance(tid, bool) or not isinstance(annotation, dict):
        raise Problem(422, "Invalid event", "an annotation event needs 'task' with an integer 'id' and 'annotation'")
    # one event at a time per dataset: two events on one task never lose either vote
    ds = datasets_repo.lock_dataset(session, tenant.id, dataset_id, shared=False)
    classes = list(ds.classes)
    item = datasets_repo.items_by_external_id(session, dataset_id, [str(tid)]).get(str(tid))
    config = _event_config(body, item, classes)
    if config is None:
        return "skipped: the event carries no label config and the task is not one of the dataset's"
    votes = task_annotations({"id": tid, "annotations": [annotation]}, config, set(classes))
    who = annotator(annotation)
    policy = CandidatePolicy.model_validate(ds.candidate_policy or {})
    if item is not None:
        kept = [v for v in item.annotations or () if v.get("annotator") != who]
        merged = kept + votes
        if merged == list(item.annotations or ()):
            return "unchanged"
        if not merged:
            return f"skipped: task {tid} would have no vote left"
        try:
            merged = validate_annotations(f"task {tid}", merged, {c: k for k, c in enumerate(classes)})
            derived = item.source is not None and item.source.get("tool") == TOOL
            candidates = derive_candidates(f"task {tid}", merged, policy) if derived else list(item.candidates)
        except InputError as exc:
            raise Problem(422, "Invalid event", str(exc)) from exc
        item.annotations, item.candidates = merged, candidates
        session.flush()
        return "updated"
    if not votes:
        return f"skipped: task {tid} is not in the dataset and the annotation gives no choice"
    data = task.get("data")
    ref = data.get(config.data_key) if isinstance(data, dict) else None
    if not isinstance(ref, str) or not ref:
        raise Problem(422, "Invalid event", f"task {tid}: its data has no {show(config.data_key)} image URL")
    session.commit()  # no transaction stays open while the image is fetched
    try:
        blob = ImageFetcher(conn)(ref)
    except FetchError as exc:
        raise Problem(422, "Task image not fetched", f"task {tid}: image {show(ref, 200)}: {exc}") from exc
    source = {"tool": TOOL, "task": tid, "from_name": config.from_name, "to_name": config.to_name}
    project = task.get("project")
    if isinstance(project, int) and not isinstance(project, bool):
        source["project"] = project
    ds = datasets_repo.lock_dataset(session, tenant.id, dataset_id, shared=False)
    incoming = Incoming(index=0, id=str(tid), candidates=None, read=lambda: blob, annotations=votes, source=source)
    result = datasets.ingest(session, tenant, ds, [incoming])  # 422 if the task arrived meanwhile with other votes
    session.flush()
    return "created" if result.created else "unchanged"


def model_version(session: Session, tenant: TenantRef, classifier_id: uuid.UUID) -> str:
    row = session.scalar(
        select(ClassifierRow.version).where(ClassifierRow.id == classifier_id, ClassifierRow.tenant_id == tenant.id)
    )
    session.commit()
    if row is None:
        raise not_found("classifier", classifier_id)
    return row
