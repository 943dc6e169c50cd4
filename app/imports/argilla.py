"""Argilla 2.x dataset exports, read as items with annotations.

The ZIP holds ``records.json`` (what the SDK's ``dataset.records.to_json(path)`` writes: a list of
``{"id", "fields", "metadata", "suggestions", "responses", ...}`` dicts, the shape of
``Record.to_dict()``), as ``Dataset.to_disk(path)`` lays it out, optionally with
``.argilla/settings.json``. Each record becomes an item of the same id:

- the image is the record's image field (the settings' field of type ``image``; without settings
  the first field whose value is an image data URI or names a file in the ZIP): a
  ``data:image/...;base64,`` URI or a path inside the ZIP;
- the label question is the settings' first ``label_selection`` (or ``multi_label_selection``)
  question, else the one question the responses answer (``label`` when there are several);
- each response to it with status ``submitted`` (or no status: the SDK's export drops it) becomes
  an annotation ``{annotator: user_id, label: value}``; ``discarded`` and ``draft`` responses are
  skipped. A multi-label response (a list of labels) contributes its labels to the item's
  candidate set. Records without a submitted response are not imported.
"""

from __future__ import annotations

import base64
import binascii
import zipfile
from collections.abc import Sequence
from pathlib import PurePosixPath

from app.core.problems import Problem
from app.datasets.service import Incoming
from app.imports.zipfiles import files, read_json, reader_of, strip_root
from app.ml.data import InputError
from app.ml.text import show

RECORDS = "records.json"
SETTINGS = ".argilla/settings.json"
LABEL_TYPES = ("label_selection", "multi_label_selection")
SKIPPED_STATUS = ("discarded", "draft")


def _rejected(detail: str) -> Problem:
    return Problem(422, "Upload rejected", detail)


def _settings(zf: zipfile.ZipFile, paths: dict[str, str]) -> tuple[list[str], list[str]]:
    """(image field names, label question names) from .argilla/settings.json, if present."""
    if SETTINGS not in paths:
        return [], []
    doc = read_json(zf, paths[SETTINGS])
    if not isinstance(doc, dict):
        raise _rejected(f"{SETTINGS} must be a JSON object (Settings.to_json)")

    def named(kind: str, types: tuple[str, ...]) -> list[str]:
        out = []
        entries = doc.get(kind)
        for entry in entries if isinstance(entries, list) else []:
            settings = entry.get("settings") if isinstance(entry, dict) else None
            if isinstance(settings, dict) and settings.get("type") in types and isinstance(entry.get("name"), str):
                out.append(entry["name"])
        return out

    return named("fields", ("image",)), named("questions", LABEL_TYPES)


def _data_uri(value: str, what: str) -> bytes:
    head, _, payload = value.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        raise InputError(f"{what} is a data URI that is not a base64 image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{what} is not valid base64") from exc


def _is_image_value(value: object, paths: dict[str, str]) -> bool:
    return isinstance(value, str) and (value.startswith("data:image/") or value.lstrip("./") in paths)


def _responses(rec: object) -> dict:
    answers = rec.get("responses") if isinstance(rec, dict) else None
    return answers if isinstance(answers, dict) else {}


def _question(records: list, questions: list[str]) -> str:
    if questions:
        return questions[0]
    asked = []
    for rec in records:
        for name in _responses(rec):
            if name not in asked:
                asked.append(name)
    if len(asked) == 1:
        return asked[0]
    if "label" in asked:
        return "label"
    if not asked:
        raise _rejected(f"{RECORDS}: no record has a response")
    raise _rejected(
        f"{RECORDS}: the responses answer several questions ({', '.join(show(a) for a in asked[:5])}); "
        f"add {SETTINGS} with one label question"
    )


def read_records(zf: zipfile.ZipFile, classes: Sequence[str]) -> list[Incoming]:
    """Items of an Argilla export ZIP (see the module's description)."""
    names = files(zf) + [n for n in zf.namelist() if n.endswith(SETTINGS)]
    _, paths = strip_root(names, lambda top: top in (RECORDS, ".argilla"), depth=1)
    if RECORDS not in paths:
        raise _rejected(f"the ZIP holds no {RECORDS} (dataset.records.to_json or Dataset.to_disk)")
    image_fields, questions = _settings(zf, paths)
    records = read_json(zf, paths[RECORDS])
    if not isinstance(records, list):
        raise _rejected(f"{RECORDS} must be a JSON list of records (dataset.records.to_json)")
    question = _question(records, questions)
    out: list[Incoming] = []
    for n, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise _rejected(f"{RECORDS}: record {n} is {show(rec)}, not an object")
        rid = rec.get("id")
        label = f"{RECORDS}: record {n}" + (f" (id {show(rid)})" if isinstance(rid, str) else "")
        if rec.get("responses") is not None and not isinstance(rec.get("responses"), dict):
            raise _rejected(f"{label}: 'responses' must be an object {{question: [responses]}}")
        responses = _responses(rec).get(question) or []
        if not isinstance(responses, list):
            raise _rejected(f"{label}: responses to {show(question)} must be a list")
        votes, candidates = [], []
        for r in responses:
            if not isinstance(r, dict) or r.get("status") in SKIPPED_STATUS:
                continue
            value, user = r.get("value"), r.get("user_id")
            if not isinstance(user, str) or not user:
                raise _rejected(f"{label}: a response to {show(question)} has no user_id")
            if isinstance(value, list):
                candidates.extend(value)
            else:
                votes.append({"annotator": user, "label": value})
        if not votes and not candidates:
            continue
        fields = rec.get("fields") or {}
        if not isinstance(fields, dict):
            raise _rejected(f"{label}: 'fields' must be an object")
        names_ = [f for f in image_fields if f in fields] or [f for f, v in fields.items() if _is_image_value(v, paths)]
        if not names_:
            raise _rejected(f"{label}: no image field (a data:image URI or a file in the ZIP)")
        value = fields[names_[0]]
        if not isinstance(value, str):
            raise _rejected(f"{label}: image field {show(names_[0])} is {show(value)}, not a data URI or path")
        if value.startswith("data:"):

            def read(v: str = value, what: str = f"image field {show(names_[0])}") -> bytes:
                return _data_uri(v, what)

        else:
            path = PurePosixPath(value.lstrip("./")).as_posix()
            if path not in paths:
                raise _rejected(f"{label}: image {show(value, 200)} is not in the ZIP")
            read = reader_of(zf, paths[path])
        cands = list(dict.fromkeys([*candidates, *(v["label"] for v in votes)])) if candidates else None
        out.append(Incoming(index=len(out), id=rid, candidates=cands, read=read, annotations=votes or None))
    if not out:
        raise _rejected(f"{RECORDS}: no record has a submitted response to {show(question)}")
    return out
