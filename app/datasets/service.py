"""Datasets and ingest: validation, de-duplication, all-or-nothing storage.

Ingest reads each image twice at most and never holds a whole upload in memory: a first pass
decodes and hashes every image (so a corrupt file rejects the batch before anything is stored),
a second pass stores only the images the tenant does not have yet, in small chunks.
"""

from __future__ import annotations

import base64
import binascii
import json
import lzma
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.problems import Problem, not_found
from app.core.security import TenantRef
from app.core.settings import get_settings
from app.datasets import repository as repo
from app.datasets.models import Dataset, Item
from app.datasets.schemas import DatasetCreate, DatasetDetail, IngestResult, ItemOutcome
from app.ml.data import InputError, validate_candidates, validate_classes
from app.ml.features import ImageError, decode_image, sha256_bytes
from app.ml.text import show, text_problem
from app.ml.votes import CandidatePolicy, derive_candidates, validate_annotations

INSERT_CHUNK = 100


def create_dataset(session: Session, tenant: TenantRef, body: DatasetCreate) -> Dataset:
    try:
        classes = validate_classes(body.classes)
    except InputError as exc:
        raise Problem(422, "Invalid classes", str(exc)) from exc
    ds = Dataset(
        tenant_id=tenant.id, name=body.name, classes=classes, candidate_policy=body.candidate_policy.model_dump()
    )
    session.add(ds)
    session.flush()
    return ds


def require_dataset(session: Session, tenant: TenantRef, dataset_id: uuid.UUID) -> Dataset:
    ds = repo.get_dataset(session, tenant.id, dataset_id)
    if ds is None:
        raise not_found("dataset", dataset_id)
    return ds


def dataset_detail(session: Session, ds: Dataset) -> DatasetDetail:
    n, total, hist = repo.candidate_stats(session, ds.id)
    return DatasetDetail(
        id=ds.id,
        name=ds.name,
        classes=ds.classes,
        candidate_policy=ds.candidate_policy,
        created_at=ds.created_at,
        item_count=n,
        mean_candidates=round(total / n, 4) if n else None,
        class_histogram={c: hist.get(c, 0) for c in ds.classes},
    )


@dataclass
class Incoming:
    """One item of an upload; ``read`` returns the image bytes (may be called twice)."""

    index: int
    id: object
    candidates: object
    read: Callable[[], bytes]
    annotations: object = None
    source: dict | None = None  # where the item came from (an import reader's tool and ids), kept with it


def _storable_id(item_id: object) -> str | None:
    return item_id if isinstance(item_id, str) and text_problem(item_id) is None else None


def _reject(index: int, item_id: object, reason: str) -> ItemOutcome:
    return ItemOutcome(index=index, id=_storable_id(item_id), status="rejected", reason=reason)


def ingest(session: Session, tenant: TenantRef, ds: Dataset, incoming: Sequence[Incoming]) -> IngestResult:
    """Store new items; identical re-sends are 'unchanged'; any bad item rejects the whole upload (422)."""
    settings = get_settings()
    class_index = {c: k for k, c in enumerate(ds.classes)}
    outcomes: list[ItemOutcome | None] = [None] * len(incoming)
    policy = CandidatePolicy.model_validate(ds.candidate_policy or {})
    checked: list[tuple[Incoming, str, list[str], list[dict] | None]] = []
    first_seen: dict[str, int] = {}
    rejected = False
    for inc in incoming:
        label = f"item {inc.index}" + (f" (id {show(inc.id)})" if isinstance(inc.id, str) else "")
        try:
            if not isinstance(inc.id, str) or not inc.id or len(inc.id) > 255:
                raise InputError("'id' must be a non-empty string of at most 255 characters")
            problem = text_problem(inc.id)
            if problem is not None:
                raise InputError(f"'id' {problem}")
            if inc.id in first_seen:
                raise InputError(f"duplicate id in this upload, first at item {first_seen[inc.id]}")
            first_seen[inc.id] = inc.index
            cands, votes = item_candidates(label, inc, class_index, policy)
            data = inc.read()
            if len(data) > settings.max_image_bytes:
                raise InputError(f"image is {len(data)} bytes, over the limit of {settings.max_image_bytes}")
            decode_image(data, label, settings.max_image_pixels).close()
            checked.append((inc, sha256_bytes(data), cands, votes))
        except (InputError, ImageError, ValueError) as exc:
            reason = str(exc).removeprefix(f"{label}: ")
            outcomes[inc.index] = _reject(inc.index, inc.id, reason)
            rejected = True

    existing = repo.items_by_external_id(session, ds.id, [inc.id for inc, *_ in checked])
    new: list[tuple[Incoming, str, list[str], list[dict] | None]] = []
    for inc, sha, cands, votes in checked:
        old = existing.get(inc.id)
        if old is None:
            new.append((inc, sha, cands, votes))
            outcomes[inc.index] = ItemOutcome(index=inc.index, id=inc.id, status="created")
        elif (
            old.image_sha256 == sha
            and list(old.candidates) == cands
            and old.annotations == votes
            and old.source == inc.source
        ):
            outcomes[inc.index] = ItemOutcome(index=inc.index, id=inc.id, status="unchanged")
        else:
            if old.image_sha256 != sha or list(old.candidates) != cands:
                what = "another image" if old.image_sha256 != sha else "another candidates"
            elif old.annotations != votes:
                what = "other annotations"
            else:
                what = "another source"
            outcomes[inc.index] = _reject(inc.index, inc.id, f"id already exists in this dataset with {what}")
            rejected = True
    if rejected:
        bad = [o for o in outcomes if o is not None and o.status == "rejected"]
        first = bad[0]
        raise Problem(
            422,
            "Upload rejected",
            f"{len(bad)} of {len(incoming)} items rejected, nothing stored; first: item {first.index}"
            + (f" (id {show(first.id)})" if first.id else "")
            + f": {first.reason}",
            items=[o.model_dump() for o in outcomes if o is not None],
        )

    have = repo.existing_images(session, tenant.id, list({sha for _, sha, *_ in new}))
    pending: list[dict] = []
    for inc, sha, *_ in new:
        if sha in have:
            continue
        have.add(sha)
        data = inc.read()
        pending.append({"tenant_id": tenant.id, "sha256": sha, "size": len(data), "data": data})
        if len(pending) >= INSERT_CHUNK:
            repo.insert_images(session, pending)
            pending = []
    repo.insert_images(session, pending)
    session.add_all(
        Item(dataset_id=ds.id, external_id=inc.id, image_sha256=sha, candidates=c, annotations=v, source=inc.source)
        for inc, sha, c, v in new
    )
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Problem(409, "Conflict", "another request is storing some of these items; retry it") from exc
    done = [o for o in outcomes if o is not None]
    return IngestResult(
        created=sum(o.status == "created" for o in done),
        unchanged=sum(o.status == "unchanged" for o in done),
        items=done,
    )


def item_candidates(
    label: str, inc: Incoming, class_index: dict[str, int], policy: CandidatePolicy
) -> tuple[list[str], list[dict] | None]:
    """The item's candidate set and its validated annotations (None when it has none). Explicit
    candidates win over annotations (kept as evidence); otherwise the policy derives the set."""
    if inc.annotations is None:
        if inc.candidates is None:
            raise InputError(f"{label}: give 'candidates' or 'annotations'")
        return validate_candidates(label, inc.candidates, class_index), None
    votes = validate_annotations(label, inc.annotations, class_index)
    if inc.candidates is not None:
        return validate_candidates(label, inc.candidates, class_index), votes
    return derive_candidates(label, votes, policy), votes


def incoming_from_json(items: Sequence) -> list[Incoming]:
    out = []
    for i, item in enumerate(items):

        def read(b64: str = item.image_base64, index: int = i) -> bytes:
            try:
                return base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InputError("image_base64 is not valid base64") from exc

        votes = None if item.annotations is None else [a.model_dump() for a in item.annotations]
        out.append(Incoming(index=i, id=item.id, candidates=item.candidates, read=read, annotations=votes))
    return out


# What reading a damaged archive can raise: zipfile documents BadZipFile, but a flipped byte also
# surfaces as zlib/lzma/bz2 (OSError) errors, EOFError, struct.error, a bad UTF-8 name
# (UnicodeDecodeError, a ValueError), RuntimeError (encrypted) or NotImplementedError (method).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    struct.error,
    ValueError,
    OverflowError,
    RuntimeError,
    NotImplementedError,
)


def zip_damage(exc: BaseException) -> str:
    """What is wrong with an archive, in plain words, from the error reading it raised."""
    if isinstance(exc, NotImplementedError):
        return "it uses a compression method Candor does not read (use deflate or no compression)"
    if isinstance(exc, RuntimeError) and "encrypt" in str(exc).lower():
        return "it is encrypted; send it without a password"
    if isinstance(exc, zipfile.BadZipFile) and "CRC" in str(exc):
        return "its data does not match its CRC checksum"
    if isinstance(exc, zlib.error | lzma.LZMAError | OSError):
        return "its compressed data is corrupt"
    if isinstance(exc, EOFError):
        return "it ends before its data does (truncated)"
    if isinstance(exc, UnicodeDecodeError):
        return "it holds a file name that is not valid UTF-8"
    return "the archive is damaged"


def open_zip(file) -> zipfile.ZipFile:
    """The ZIP in ``file``, or 422 when it is not one or its directory is damaged."""
    try:
        return zipfile.ZipFile(file)
    except zipfile.BadZipFile as exc:
        raise Problem(422, "Upload rejected", "the upload is not a ZIP file") from exc
    except ZIP_ERRORS as exc:
        raise Problem(422, "Upload rejected", f"the upload is not a readable ZIP file: {zip_damage(exc)}") from exc


def _manifest_rows(zf: zipfile.ZipFile, manifest: str, max_line: int):
    """(line number, parsed object) for each non-blank line; 422 for a damaged or oversized line.
    A line is read at most ``max_line + 1`` bytes at a time, so one huge line is never held whole."""
    try:
        with zf.open(manifest) as f:
            lineno = 0
            while True:
                raw = f.readline(max_line + 1)
                if not raw:
                    return
                lineno += 1
                if len(raw) > max_line and not raw.endswith(b"\n"):
                    raise Problem(422, "Upload rejected", f"manifest line {lineno} is longer than {max_line} bytes")
                if not raw.strip():
                    continue
                yield lineno, _parse_line(raw, lineno)
    except ZIP_ERRORS as exc:
        raise Problem(422, "Upload rejected", f"manifest.jsonl cannot be read: {zip_damage(exc)}") from exc


def _parse_line(raw: bytes, lineno: int) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(422, "Upload rejected", f"manifest line {lineno}: not UTF-8 text") from exc
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(422, "Upload rejected", f"manifest line {lineno}: not valid JSON ({exc.msg})") from exc
    except RecursionError as exc:
        raise Problem(422, "Upload rejected", f"manifest line {lineno}: JSON nested too deeply") from exc
    if not isinstance(row, dict):
        raise Problem(422, "Upload rejected", f"manifest line {lineno}: expected a JSON object")
    return row


def incoming_from_zip(zf: zipfile.ZipFile) -> list[Incoming]:
    """Items of a ZIP holding ``manifest.jsonl`` (at the root or in one top folder) and the images.

    A manifest line's ``image`` is a path relative to the manifest. A line without ``image``
    (ImageFolder layout: ``CLASS/ID.png``) takes the one file whose name without extension is the
    item's id. A damaged archive, manifest or member answers 422, never half-stored.
    """
    settings = get_settings()
    names = [n for n in zf.namelist() if not n.endswith("/")]
    manifests = sorted((n for n in names if PurePosixPath(n).name == "manifest.jsonl"), key=len)
    if not manifests:
        raise Problem(422, "Upload rejected", "the ZIP holds no manifest.jsonl")
    manifest = manifests[0]
    root = PurePosixPath(manifest).parent
    by_stem: dict[str, list[str]] = {}
    for n in names:
        if n != manifest:
            by_stem.setdefault(PurePosixPath(n).stem, []).append(n)
    available = set(names)
    out: list[Incoming] = []
    for _lineno, row in _manifest_rows(zf, manifest, settings.max_manifest_line_bytes):
        index = len(out)
        item_id = row.get("id")
        image = row.get("image")
        if isinstance(image, str) and image:
            path = str(root / image) if str(root) != "." else image
        else:
            matches = by_stem.get(str(item_id), [])
            path = matches[0] if len(matches) == 1 else None

        def read(p: str | None = path, iid: object = item_id, img: object = image) -> bytes:
            if p is None:
                raise InputError(f"no image for id {show(iid)}: give 'image' or one file named after the id")
            if p not in available:
                raise InputError(f"image {show(img, 200)} is not in the ZIP")
            try:
                with zf.open(p) as fh:
                    return fh.read(settings.max_image_bytes + 1)
            except ZIP_ERRORS as exc:
                raise InputError(f"ZIP member {show(p, 200)} cannot be read: {zip_damage(exc)}") from exc

        out.append(
            Incoming(
                index=index, id=item_id, candidates=row.get("candidates"), read=read, annotations=row.get("annotations")
            )
        )
    return out
