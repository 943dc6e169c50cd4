"""The Candor client: one ``Client(base_url, api_key)`` for every call of the API.

Every request is retried on 429, 502, 503, 504 and on connection errors, with exponential backoff
(honouring ``Retry-After``). Every POST that creates something carries an ``Idempotency-Key``,
reused across its retries, so a retry never creates twice; upload batches take theirs from their
content, so running the same upload again replays instead of storing anything twice.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from candor import errors, sources, tools
from candor.formats import LABEL_FORMATS as FORMATS
from candor.models import (
    TERMINAL_STATES,
    Annotator,
    Bound,
    Classifier,
    ClassifierSummary,
    Dataset,
    DatasetDetail,
    DatasetSummary,
    IngestResult,
    Item,
    ItemOutcome,
    Job,
    JobSummary,
    LabelRow,
    Page,
    Prediction,
    UploadResult,
)

log = logging.getLogger("candor.client")
log.addHandler(logging.NullHandler())  # a library: retries are logged where the application configures logging
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_PREDICT_IMAGES = 256
ARTIFACT_FILES = ("classifier.safetensors", "classifier.json")
B = TypeVar("B", bound=Bound)

Source = str | os.PathLike | Iterable[dict[str, Any]]
ImageInput = Any  # a path, bytes, a PIL image, or a list of them
Ref = str | uuid.UUID | BaseModel


def _item_payload(item: sources.SourceItem, data: bytes) -> dict[str, Any]:
    """One item of an upload batch: candidates and annotations only where given."""
    out: dict[str, Any] = {"id": item.id, "image_base64": base64.b64encode(data).decode("ascii")}
    if item.candidates is not None:
        out["candidates"] = item.candidates
    if item.annotations is not None:
        out["annotations"] = item.annotations
    return out


def _id(ref: Ref) -> str:
    """The id of a resource given as an id or as the object itself."""
    ident = getattr(ref, "id", ref)
    return str(ident)


def image_bytes(image: Any) -> bytes:
    """An image file's bytes from a path, bytes or a PIL image (written as PNG)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise errors.InvalidSource(f"image {str(path)!r} cannot be read ({exc.strerror or 'read error'})") from exc
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise errors.InvalidSource(f"an image must be a path, bytes or a PIL image, not {type(image).__name__}")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _progress_bar(enabled: bool, **kwargs: Any):
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


class Client:
    """A client of one Candor service.

    ``base_url`` defaults to ``$CANDOR_SERVER`` (else ``http://127.0.0.1:8000``), ``api_key`` to
    ``$CANDOR_API_KEY``. ``max_retries`` retries per request, waiting ``backoff * 2**n`` seconds
    (at most ``max_backoff``) or what ``Retry-After`` asks (at most ``max_retry_after``).
    ``progress`` shows progress bars (on stderr) for uploads and ``wait``. Use it as a context
    manager, or call ``close()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        progress: bool = True,
        transport: httpx.BaseTransport | None = None,
    ):
        base_url = base_url or os.environ.get("CANDOR_SERVER") or "http://127.0.0.1:8000"
        api_key = api_key or os.environ.get("CANDOR_API_KEY")
        if not api_key:
            raise errors.CandorError("no API key: pass api_key= or set CANDOR_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.progress = progress
        from candor import __version__

        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"candor-python/{__version__}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    # ---- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            asked = _retry_after(response)
            if asked is not None:
                return min(asked, self.max_retry_after)
        return min(self.backoff * 2**attempt, self.max_backoff)

    def _send(
        self,
        method: str,
        path: str,
        *,
        stream: bool = False,
        content: bytes | Callable[[], Iterator[bytes]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send with retries; an error answer raises its ``CandorError``. A streamed response is
        open: the caller closes it."""
        attempt = 0
        while True:
            body = content() if callable(content) else content
            request = self._http.build_request(method, path, content=body, **kwargs)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise errors.ConnectionFailed(
                        f"cannot reach Candor at {self.base_url} ({type(exc).__name__}: {exc or 'no answer'}); "
                        f"gave up after {attempt + 1} attempts"
                    ) from exc
                delay = self._delay(attempt, None)
                log.warning("%s %s: %s; retrying in %.1f s", method, path, type(exc).__name__, delay)
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
                    response.read()
                    response.close()
                    raise errors.from_response(response)
                delay = self._delay(attempt, response)
                response.close()
                log.warning("%s %s: %s; retrying in %.1f s", method, path, response.status_code, delay)
            time.sleep(delay)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _post_json(self, path: str, payload: Any, key: str | None = None) -> httpx.Response:
        """POST a JSON body with an Idempotency-Key (a fresh one unless given), kept across retries."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key or f"candor-{uuid.uuid4()}"}
        return self._send("POST", path, content=body, headers=headers)

    def _bind(self, obj: B) -> B:
        obj._client = self
        return obj

    def _pages(self, path: str, model: type[B], limit: int, params: dict[str, Any] | None = None) -> Iterator[B]:
        cursor: str | None = None
        while True:
            query = {"limit": limit, **(params or {})}
            if cursor:
                query["cursor"] = cursor
            page = Page[model].model_validate(self._json("GET", path, params=query))  # type: ignore[valid-type]
            for obj in page.items:
                yield self._bind(obj) if isinstance(obj, Bound) else obj
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # ---- health --------------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        """``/readyz``: the service's database and broker answer (Unavailable otherwise)."""
        return self._json("GET", "/readyz")

    # ---- datasets ------------------------------------------------------------------------------
    def create_dataset(
        self, name: str, classes: Sequence[str], *, candidate_policy: dict[str, Any] | None = None
    ) -> Dataset:
        """A new dataset; ``candidate_policy`` (``min_votes``, ``ground_truth_wins``) sets how items'
        annotations become candidate sets (default: the union of the annotators' labels)."""
        payload: dict[str, Any] = {"name": name, "classes": list(classes)}
        if candidate_policy is not None:
            payload["candidate_policy"] = dict(candidate_policy)
        body = self._post_json("/v1/datasets", payload).json()
        return self._bind(Dataset.model_validate(body))

    def get_dataset(self, dataset: Ref) -> DatasetDetail:
        return self._bind(DatasetDetail.model_validate(self._json("GET", f"/v1/datasets/{_id(dataset)}")))

    def list_datasets(self, *, page_size: int = 100) -> Iterator[DatasetSummary]:
        """Every dataset of the tenant, newest first (the pages are followed as you iterate)."""
        return self._pages("/v1/datasets", DatasetSummary, page_size)

    def list_items(self, dataset: Ref, *, page_size: int = 1000) -> Iterator[Item]:
        """A dataset's items in upload order."""
        return self._pages(f"/v1/datasets/{_id(dataset)}/items", Item, page_size)

    def delete_dataset(self, dataset: Ref) -> None:
        """Delete a dataset and its items (Conflict while one of its jobs runs)."""
        self._send("DELETE", f"/v1/datasets/{_id(dataset)}").close()

    def upload(
        self,
        dataset: Ref,
        source: Source,
        *,
        batch_size: int = 100,
        batch_bytes: int = 32 << 20,
        progress: bool | None = None,
        format: str = "candor",
    ) -> UploadResult:
        """Upload a folder, a manifest.jsonl, a ZIP or an iterable of ``{id, image, candidates}``.

        ``format`` names the layout of a ZIP or folder (:data:`candor.formats.IMPORT_FORMATS`):
        'candor' (the default), or a labelling tool's export as it is: 'labelstudio' (a JSON export
        with label_config.xml and the media), 'fiftyone-tree', 'fiftyone', 'argilla'. A folder in a
        tool's layout is zipped and sent to the import route.

        Items go in batches of at most ``batch_size`` items and about ``batch_bytes`` bytes of
        images (a ZIP goes whole, to the import route). Each batch is all-or-nothing: a rejected one
        raises ``ValidationFailed`` whose ``items`` give every item's outcome, indexed by position in
        the whole upload, and whose ``uploaded`` is the result of the batches before it: those are
        stored, and running the upload again after the fix replays them."""
        show = self.progress if progress is None else progress
        tools.check_format(format)
        if format != "candor":
            if not isinstance(source, str | os.PathLike):
                raise ValueError(f"format {format} reads a folder or a ZIP file, not an iterable")
            path = Path(source)
            if path.is_dir():
                zipped = tools.zip_folder(path)
                try:
                    return self._upload_zip(_id(dataset), zipped, show, format)
                finally:
                    zipped.unlink(missing_ok=True)
            return self._upload_zip(_id(dataset), path, show, format)
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if path.is_file() and zipfile.is_zipfile(path):
                return self._upload_zip(_id(dataset), path, show, format)
            items = sources.from_path(path)
        else:
            items = sources.from_iterable(source)
        return self._upload_items(_id(dataset), items, batch_size, batch_bytes, show)

    def _upload_items(
        self, dataset_id: str, items: list[sources.SourceItem], batch_size: int, batch_bytes: int, show: bool
    ) -> UploadResult:
        result = UploadResult()
        route = f"/v1/datasets/{dataset_id}/items"
        with _progress_bar(show, total=len(items), unit="item", desc="upload") as bar:
            start = 0
            batches = list(self._batches(items, batch_size, batch_bytes))
            for number, batch in enumerate(batches, 1):
                payload = [_item_payload(it, data) for it, data in batch]
                body = json.dumps({"items": payload}, separators=(",", ":"), ensure_ascii=False)
                key = "candor-batch-" + hashlib.sha256(f"{dataset_id}\0{body}".encode()).hexdigest()[:48]
                try:
                    response = self._post_json(route, {"items": payload}, key=key)
                except errors.CandorError as exc:
                    raise _in_batch(exc, number, len(batches), start, len(batch), result) from None
                self._add_batch(result, response, start)
                start += len(batch)
                bar.update(len(batch))
        return result

    @staticmethod
    def _batches(items: list[sources.SourceItem], size: int, max_bytes: int) -> Iterator[list[tuple[Any, bytes]]]:
        batch: list[tuple[Any, bytes]] = []
        total = 0
        for it in items:
            data = it.read()
            if batch and (len(batch) >= size or total + len(data) > max_bytes):
                yield batch
                batch, total = [], 0
            batch.append((it, data))
            total += len(data)
        if batch:
            yield batch

    @staticmethod
    def _add_batch(result: UploadResult, response: httpx.Response, offset: int) -> None:
        ingest = IngestResult.model_validate(response.json())
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        for outcome in ingest.items:
            status = "unchanged" if replayed and outcome.status == "created" else outcome.status
            result.items.append(outcome.model_copy(update={"index": outcome.index + offset, "status": status}))
        result.created += 0 if replayed else ingest.created
        result.unchanged += ingest.created + ingest.unchanged if replayed else ingest.unchanged
        result.batches += 1
        result.replayed_batches += int(replayed)

    def _upload_zip(self, dataset_id: str, path: Path, show: bool, format: str = "candor") -> UploadResult:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        size = path.stat().st_size
        salt = "" if format == "candor" else f"{format}\0"
        key = "candor-zip-" + hashlib.sha256(f"{dataset_id}\0{salt}{digest.hexdigest()}".encode()).hexdigest()[:48]
        with _progress_bar(show, total=size, unit="B", unit_scale=True, desc="upload") as bar:

            def chunks() -> Iterator[bytes]:
                bar.reset(total=size)
                with path.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        bar.update(len(chunk))
                        yield chunk

            headers = {"Content-Type": "application/zip", "Idempotency-Key": key, "Content-Length": str(size)}
            response = self._send(
                "POST",
                f"/v1/datasets/{dataset_id}/imports",
                content=chunks,
                headers=headers,
                params={} if format == "candor" else {"format": format},
                timeout=None,
            )
        result = UploadResult()
        self._add_batch(result, response, 0)
        return result

    def import_labelstudio(
        self, dataset: Ref | None, url: str, token: str, project: int, *, name: str | None = None
    ) -> tuple[DatasetDetail | Dataset, UploadResult]:
        """Read a Label Studio project (its JSON export, labeling config and task images, over its
        API with ``token``) into ``dataset``, or into a new dataset named ``name`` whose classes
        are the config's choices. Returns the dataset and the upload's result."""
        from candor import labelstudio

        with tempfile.TemporaryDirectory(prefix="candor-ls-") as tmp:
            path, classes = labelstudio.export_zip(url, token, project, Path(tmp) / "labelstudio.zip")
            if dataset:
                ds = self.get_dataset(dataset)
            else:
                ds = self.create_dataset(name or f"labelstudio-{project}", classes)
            return ds, self.upload(ds, path, format="labelstudio")

    def push_labelstudio(self, job: Ref, url: str, token: str, project: int, **filters: Any) -> int:
        """Import a finished job's labels into a Label Studio project as predictions (on the task
        ids its items were imported with); how many. ``filters``: flag, max_confidence, order."""
        from candor import labelstudio

        params = _label_filters(filters.get("flag"), filters.get("max_confidence"), filters.get("order"))
        preds = self._json("GET", f"/v1/jobs/{_id(job)}/labels", params=params | {"format": "labelstudio"})
        return labelstudio.push_predictions(url, token, project, preds)

    # ---- jobs ----------------------------------------------------------------------------------
    def start_job(self, dataset: Ref, config: dict[str, Any] | BaseModel | None = None) -> Job:
        """Start a cleaning job; ``config`` is the engine's config as a dict (defaults apply)."""
        payload: dict[str, Any] = {"dataset_id": _id(dataset)}
        if config is not None:
            payload["config"] = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
        return self._bind(Job.model_validate(self._post_json("/v1/jobs", payload).json()))

    def get_job(self, job: Ref) -> Job:
        return self._bind(Job.model_validate(self._json("GET", f"/v1/jobs/{_id(job)}")))

    def list_jobs(self, *, page_size: int = 100) -> Iterator[JobSummary]:
        """Every job of the tenant, newest first."""
        return self._pages("/v1/jobs", JobSummary, page_size)

    def cancel_job(self, job: Ref) -> Job:
        """Cancel: a queued job at once, a running one between training batches ('cancelling')."""
        return self._bind(Job.model_validate(self._json("POST", f"/v1/jobs/{_id(job)}/cancel")))

    def wait(
        self,
        job: Ref,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool | None = None,
        raise_on_failure: bool = True,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job ends and return it. ``JobFailed`` if it failed or was cancelled
        (unless ``raise_on_failure`` is false); ``WaitTimeout`` after ``timeout`` seconds (the job
        goes on). ``on_update`` is called with the job after every poll."""
        show = self.progress if progress is None else progress
        deadline = None if timeout is None else time.monotonic() + timeout
        with _progress_bar(show, total=0, unit="step", desc="queued") as bar:
            while True:
                current = self.get_job(job)
                _show_job(bar, current)
                if on_update is not None:
                    on_update(current)
                if current.state in TERMINAL_STATES:
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise errors.WaitTimeout(f"job {current.id} is still {current.state} after {timeout:g} s", current)
                time.sleep(poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - now)))
        if raise_on_failure and current.state != "succeeded":
            why = f": {current.error}" if current.error else ""
            raise errors.JobFailed(f"job {current.id} {current.state}{why}", current)
        return current

    def labels(
        self,
        job: Ref,
        *,
        flag: str | None = None,
        max_confidence: float | None = None,
        order: str | None = None,
    ) -> Iterator[LabelRow]:
        """The cleaned labels of a finished job, streamed row by row. ``flag`` ('ambiguous' or
        'candidates_suspect'), ``max_confidence`` and ``order='review'`` (the review queue's
        order, most worth a look first) are applied by the service."""
        params = _label_filters(flag, max_confidence, order) | {"format": "jsonl"}
        response = self._send("GET", f"/v1/jobs/{_id(job)}/labels", params=params, stream=True)

        def rows() -> Iterator[LabelRow]:
            try:
                for line in response.iter_lines():
                    if line.strip():
                        yield LabelRow.model_validate_json(line)
            finally:
                response.close()

        return rows()

    def download_labels(
        self,
        job: Ref,
        path: str | os.PathLike,
        *,
        format: str = "jsonl",
        flag: str | None = None,
        max_confidence: float | None = None,
        order: str | None = None,
        from_name: str | None = None,
        to_name: str | None = None,
        label_question: str | None = None,
        candidates_question: str | None = None,
    ) -> Path:
        """Write a finished job's labels to ``path`` (the file appears whole or not at all) in one of
        the formats of :data:`candor.formats.LABEL_FORMATS`: 'jsonl', 'csv', 'labelstudio' (Label Studio
        predictions; ``from_name``/``to_name`` name the label config's <Choices> and <Image>),
        'argilla' (Argilla 2.x records; ``label_question``/``candidates_question`` name the dataset's
        single-label and multi-label questions), 'fiftyone' (labels.json), 'pred_probs' (cleanlab's N x K
        probabilities, out-of-sample when the job ran with cross_validation.folds) or
        'pred_probs_npz' (the same as NumPy arrays: ``np.load(path, allow_pickle=False)``).
        Returns the path."""
        if format not in FORMATS:
            raise ValueError(f"unknown labels format {format}; one of {', '.join(FORMATS)}")
        names = {
            k: v
            for k, v in (
                ("from_name", from_name),
                ("to_name", to_name),
                ("label_question", label_question),
                ("candidates_question", candidates_question),
            )
            if v is not None
        }
        params = _label_filters(flag, max_confidence, order) | {"format": format} | names
        target = Path(path)
        response = self._send("GET", f"/v1/jobs/{_id(job)}/labels", params=params, stream=True)
        try:
            with _atomic(target) as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        finally:
            response.close()
        return target

    def annotators(self, job: Ref) -> list[Annotator]:
        """Per annotator of a finished job: items labelled, estimated accuracy and confusion between
        classes (empty when the job's items carry no annotations)."""
        data = self._json("GET", f"/v1/jobs/{_id(job)}/annotators")
        return [Annotator.model_validate(a) for a in data["annotators"]]

    def download_annotators(self, job: Ref, path: str | os.PathLike, *, format: str = "json") -> Path:
        """Write a finished job's annotator estimates to ``path`` as 'json' or 'csv'."""
        if format not in ("json", "csv"):
            raise ValueError(f"unknown annotators format {format}; one of json, csv")
        response = self._send("GET", f"/v1/jobs/{_id(job)}/annotators", params={"format": format})
        target = Path(path)
        with _atomic(target) as f:
            f.write(response.content)
        return target

    # ---- classifiers ---------------------------------------------------------------------------
    def get_classifier(self, classifier: Ref) -> Classifier:
        return self._bind(Classifier.model_validate(self._json("GET", f"/v1/classifiers/{_id(classifier)}")))

    def list_classifiers(self, *, page_size: int = 100) -> Iterator[ClassifierSummary]:
        """Every classifier of the tenant, newest first."""
        return self._pages("/v1/classifiers", ClassifierSummary, page_size)

    def delete_classifier(self, classifier: Ref) -> None:
        self._send("DELETE", f"/v1/classifiers/{_id(classifier)}").close()

    def predict(
        self,
        classifier: Ref,
        images: ImageInput,
        *,
        top_k: int = 5,
        candidates: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Classify images given as paths, bytes or PIL images (one or a list); one prediction per
        image, in order. Sent 256 images a request."""
        if isinstance(images, str | os.PathLike | bytes | bytearray) or hasattr(images, "save"):
            images = [images]
        blobs = [image_bytes(x) for x in images]
        out: list[Prediction] = []
        for start in range(0, len(blobs), MAX_PREDICT_IMAGES):
            chunk = blobs[start : start + MAX_PREDICT_IMAGES]
            payload: dict[str, Any] = {"images": [base64.b64encode(b).decode("ascii") for b in chunk], "top_k": top_k}
            if candidates is not None:
                payload["candidates"] = list(candidates)
            body = json.dumps(payload).encode()
            answer = self._json(
                "POST",
                f"/v1/classifiers/{_id(classifier)}/predict",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            for p in answer["predictions"]:
                out.append(Prediction.model_validate(p | {"index": p["index"] + start}))
        return out

    def download_classifier(self, classifier: Ref, folder: str | os.PathLike) -> Path:
        """Save a classifier the service trained into ``folder`` (``classifier.safetensors`` and
        ``classifier.json``, what ``candor predict`` loads). Returns the folder."""
        target = Path(folder)
        response = self._send("GET", f"/v1/classifiers/{_id(classifier)}/artifact", stream=True)
        try:
            with tempfile.TemporaryFile() as tmp:
                for chunk in response.iter_bytes():
                    tmp.write(chunk)
                tmp.seek(0)
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                target.mkdir(parents=True, exist_ok=True)
                if ctype == "application/zip" or zipfile.is_zipfile(tmp):
                    tmp.seek(0)
                    _extract_artifact_zip(tmp, target)
                else:
                    tmp.seek(0)
                    _write_artifact_blob(tmp.read(), target)
        finally:
            response.close()
        return target


# ---- helpers -------------------------------------------------------------------------------------
def _label_filters(flag: str | None, max_confidence: float | None, order: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if flag is not None:
        params["flag"] = flag
    if max_confidence is not None:
        params["max_confidence"] = max_confidence
    if order is not None:
        params["order"] = order
    return params


def _show_job(bar: Any, job: Job) -> None:
    p = job.progress
    bar.set_description(p.stage if p.stage and job.state not in TERMINAL_STATES else job.state, refresh=False)
    if p.epoch and p.epochs:
        total, done = p.epochs, p.epoch
        loss = f"loss {p.last_loss:.4f}" if p.last_loss is not None else ""
        eta = f"ETA {p.eta_seconds:.0f} s" if p.eta_seconds is not None else ""
        bar.set_postfix_str(" ".join(x for x in (loss, eta) if x), refresh=False)
    else:
        total, done = p.total or 0, p.done or 0
    if bar.total != total:
        bar.reset(total=total)
    bar.n = done
    bar.refresh()


class _atomic:
    """Write a file whole or not at all: a temporary file beside it, renamed into place."""

    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> IO[bytes]:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=self.target.parent)
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            os.unlink(self.tmp)


def _extract_artifact_zip(file: IO[bytes], target: Path) -> None:
    with zipfile.ZipFile(file) as zf:
        by_name = {Path(n).name: n for n in zf.namelist() if Path(n).name in ARTIFACT_FILES}
        missing = [f for f in ARTIFACT_FILES if f not in by_name]
        if missing:
            raise errors.CandorError(f"the classifier artifact lacks {missing[0]}")
        for name, member in by_name.items():
            with _atomic(target / name) as out:
                out.write(zf.read(member))


def _write_artifact_blob(data: bytes, target: Path) -> None:
    """A safetensors file whose metadata holds the classifier's JSON: the tensors file as it is,
    the JSON beside it."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["meta"])
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.CandorError("the classifier artifact is not a Candor classifier (safetensors)") from exc
    with _atomic(target / ARTIFACT_FILES[0]) as out:
        out.write(data)
    with _atomic(target / ARTIFACT_FILES[1]) as out:
        out.write((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def _in_batch(
    exc: errors.CandorError, number: int, count: int, start: int, size: int, done: UploadResult
) -> errors.CandorError:
    """The error of batch ``number`` with its items indexed in the whole upload and the batch named."""
    problem = dict(exc.problem)
    if isinstance(problem.get("items"), list):
        problem["items"] = [
            (i | {"index": i["index"] + start}) if isinstance(i, dict) and isinstance(i.get("index"), int) else i
            for i in problem["items"]
        ]
    message = str(exc)
    if count > 1:
        where = f"batch {number} of {count} (upload items {start}-{start + size - 1})"
        stored = f"; the {done.created + done.unchanged} items of earlier batches are stored" if start else ""
        message += f" [{where}{stored}]"
    new = type(exc)(message, status=exc.status, problem=problem)
    new.uploaded = done  # type: ignore[attr-defined]
    return new


__all__ = ["Client", "ItemOutcome", "image_bytes"]
