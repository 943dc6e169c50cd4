"""Label exports: a finished job's label rows written in the formats labelling tools read.

Pure formatting over label rows (the LabelRow dicts: id, label, confidence, posterior over the
candidates, margin, outside_mass, flags, prior_label, annotations, agreed), the dataset's classes
and the job's metadata. Used by the labels route, by `candor clean` and (for the format names) by the
Python client and `candor remote labels` (candor.formats).

Every writer yields bytes piece by piece from an iterable of rows; formats whose JSON needs a
column per pass (pred_probs) take a function that returns a fresh iterable each time it is called,
so memory stays bounded by one row, not by the job.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from app.ml.quality import row_quality
from candor.formats import LABEL_FORMATS

Rows = Callable[[], Iterable[dict]]

FORMATS = LABEL_FORMATS  # format -> (media type, file suffix)
FLAGS = ("ambiguous", "candidates_suspect")
SCALARS = ("label", "confidence", "margin", "outside_mass", "ambiguous", "candidates_suspect", "prior_label")
CSV_FIELDS = ("id", *SCALARS)  # then posterior, annotations, agreed; columns added later go after them
REVIEW_FIELDS = ("reviewed", "reviewed_label", "reviewed_none_of_these")  # a person's latest decision
AGENT = "candor"


@dataclass(frozen=True)
class ExportMeta:
    """What the rows alone do not say: the dataset's classes (in order), the classifier's version
    (None when the job trained none), the Label Studio control and object names asked for (None:
    those a Label Studio import recorded in the item's source, else `choice` and `image`) and the
    Argilla question names of the single-label and the multi-label suggestion."""

    classes: tuple[str, ...] = ()
    model_version: str | None = None
    from_name: str | None = None  # None: the item's source's, else "choice"
    to_name: str | None = None  # None: the item's source's, else "image"
    argilla_label: str = "label"
    argilla_candidates: str = "candidates"


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def jsonl(rows: Iterable[dict]) -> Iterator[bytes]:
    """One JSON object a line."""
    for row in rows:
        yield (json.dumps(row) + "\n").encode()


def write_jsonl(rows: Iterable[dict], f) -> None:
    """jsonl into a binary file."""
    for chunk in jsonl(rows):
        f.write(chunk)


def csv_rows(rows: Iterable[dict], flush_at: int = 1 << 16) -> Iterator[bytes]:
    """A header, then a row per item; the posterior, the annotations (annotator: label) and the
    agreeing annotators as JSON, then the columns added since, in that order (so a reader of the
    earlier layout keeps its columns): ``label_quality`` and the review columns (``reviewed``,
    ``reviewed_label``, ``reviewed_none_of_these``)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*CSV_FIELDS, "posterior", "annotations", "agreed", "label_quality", *REVIEW_FIELDS])
    for row in rows:
        compact = {a["annotator"]: a["label"] for a in row.get("annotations") or ()}
        writer.writerow(
            [
                *(row.get(f) for f in CSV_FIELDS),
                json.dumps(row["posterior"]),
                json.dumps(compact),
                json.dumps(row.get("agreed", [])),
                row.get("label_quality"),
                bool(row.get("reviewed", False)),
                row.get("reviewed_label"),
                bool(row.get("reviewed_none_of_these", False)),
            ]
        )
        if buf.tell() > flush_at:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def _array(items: Iterable) -> Iterator[bytes]:
    """A JSON array written element by element."""
    yield b"["
    sep = b""
    for item in items:
        yield sep + _dump(item).encode()
        sep = b","
    yield b"]"


def _flags_meta(row: dict) -> dict:
    return {
        "ambiguous": row["ambiguous"],
        "candidates_suspect": row["candidates_suspect"],
        "margin": row["margin"],
        "outside_mass": row["outside_mass"],
        "prior_label": row.get("prior_label"),
        "posterior": row["posterior"],
        "agreed": row.get("agreed", []),
        "reviewed": row.get("reviewed", False),
        "reviewed_label": row.get("reviewed_label"),
        "reviewed_none_of_these": row.get("reviewed_none_of_these", False),
    }


def labelstudio_task(row: dict) -> int | str:
    """The Label Studio task an item's prediction belongs to: the task id a Label Studio import kept
    in the item's source, else the item id (as a number when it is one, as task ids are)."""
    source = row.get("source") or {}
    task = source.get("task") if source.get("tool") == "labelstudio" else None
    if isinstance(task, int):
        return task
    item_id = row["id"]
    return int(item_id) if item_id.isascii() and item_id.isdigit() and len(item_id) < 19 else item_id


def labelstudio_prediction(row: dict, meta: ExportMeta) -> dict:
    """A Label Studio prediction for one item: its task (see labelstudio_task), the classifier's
    version, the confidence as the score, a `choices` result from the label config's <Choices> to
    its <Image> (the names recorded at import unless the meta names others) and the flags in `meta`."""
    source = row.get("source") or {}
    return {
        "task": labelstudio_task(row),
        "model_version": meta.model_version or AGENT,
        "score": row["confidence"],
        "result": [
            {
                "from_name": meta.from_name or source.get("from_name") or "choice",
                "to_name": meta.to_name or source.get("to_name") or "image",
                "type": "choices",
                "value": {"choices": [row["label"]]},
            }
        ],
        "meta": _flags_meta(row),
    }


def labelstudio(rows: Iterable[dict], meta: ExportMeta) -> Iterator[bytes]:
    """A JSON array of Label Studio predictions."""
    return _array(labelstudio_prediction(r, meta) for r in rows)


def argilla_record(row: dict, meta: ExportMeta) -> dict:
    """An Argilla 2.x record in the SDK's JSON shape (``Record.to_dict()``, what
    ``dataset.records.to_json`` writes and ``Record.from_dict`` reads) that adds Candor's suggestions
    to the record of the same id: ``label`` (single label, scored by the confidence) and
    ``candidates`` (multi label: the candidates, most probable first, each with its posterior).
    ``fields`` is empty: logged with ``dataset.records.log``, the suggestions update the records."""
    agent = f"{AGENT}-{meta.model_version}" if meta.model_version else AGENT
    ranked = sorted(row["posterior"].items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "id": row["id"],
        "fields": {},
        "metadata": {
            "ambiguous": row["ambiguous"],
            "candidates_suspect": row["candidates_suspect"],
            "margin": row["margin"],
            "outside_mass": row["outside_mass"],
            "label_quality": row["label_quality"],
        },
        "suggestions": {
            meta.argilla_label: {"value": row["label"], "score": row["confidence"], "agent": agent, "type": "model"},
            meta.argilla_candidates: {
                "value": [c for c, _ in ranked],
                "score": [p for _, p in ranked],
                "agent": agent,
                "type": "model",
            },
        },
        "responses": {},
        "vectors": {},
    }


def argilla(rows: Iterable[dict], meta: ExportMeta) -> Iterator[bytes]:
    """A JSON array of Argilla records."""
    return _array(argilla_record(r, meta) for r in rows)


def fiftyone_label(row: dict, meta: ExportMeta) -> dict:
    """A FiftyOneImageClassificationDataset label: the class index (into `classes`), the confidence
    and the flags as attributes."""
    return {
        "label": meta.classes.index(row["label"]),
        "confidence": row["confidence"],
        "attributes": {
            "ambiguous": row["ambiguous"],
            "candidates_suspect": row["candidates_suspect"],
            "margin": row["margin"],
            "outside_mass": row["outside_mass"],
            "label_quality": row["label_quality"],
        },
    }


def fiftyone(rows: Iterable[dict], meta: ExportMeta) -> Iterator[bytes]:
    """FiftyOne's `labels.json`: {"classes": [...], "labels": {item id: label}}."""
    yield b'{"classes":' + _dump(list(meta.classes)).encode() + b',"labels":{'
    sep = b""
    for row in rows:
        yield sep + _dump(row["id"]).encode() + b":" + _dump(fiftyone_label(row, meta)).encode()
        sep = b","
    yield b"}}"


def pred_probs_row(row: dict, classes: tuple[str, ...]) -> list[float]:
    """The item's pred_probs row over every class in the dataset's order: the k-fold out-of-sample
    probabilities when the job computed them, else the posterior over the candidates, zero outside
    the candidate set (the row sums to 1)."""
    oos = row.get("pred_probs_oos")
    if oos is not None:
        return list(oos)
    post = row["posterior"]
    return [post.get(c, 0.0) for c in classes]


def with_quality(row: dict, classes: tuple[str, ...]) -> dict:
    """The row with ``label_quality``: cleanlab's self-confidence of the chosen label in its
    pred_probs row (app.ml.quality)."""
    quality = row_quality(pred_probs_row(row, classes), classes.index(row["label"]))
    return row | {"label_quality": round(quality, 6)}


def pred_probs(rows: Rows, meta: ExportMeta) -> Iterator[bytes]:
    """cleanlab's inputs as JSON: {"classes", "ids", "labels", "pred_probs": N x K, "label_quality": N,
    "out_of_sample"}. ``labels`` are Candor's chosen labels as class indices (cleanlab's ``labels``);
    ``out_of_sample`` says whether the rows come from the k-fold trainings (true) or from the
    classifier trained on these same items (false)."""
    index = {c: k for k, c in enumerate(meta.classes)}
    yield b'{"classes":' + _dump(list(meta.classes)).encode() + b',"ids":'
    yield from _array(r["id"] for r in rows())
    yield b',"labels":'
    yield from _array(index[r["label"]] for r in rows())
    yield b',"pred_probs":'
    seen = {"oos": False}

    def probs(r: dict) -> list[float]:
        seen["oos"] = seen["oos"] or r.get("pred_probs_oos") is not None
        return pred_probs_row(r, meta.classes)

    yield from _array(probs(r) for r in rows())
    yield b',"label_quality":'
    yield from _array(r["label_quality"] for r in rows())
    yield b',"out_of_sample":' + (b"true" if seen["oos"] else b"false") + b"}"


def _npy(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple, rows: Iterable) -> None:
    """One .npy member written row by row (no pickle: plain dtypes only)."""
    with zf.open(name, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype.str, "fortran_order": False, "shape": shape})
        for value in rows:
            f.write(np.asarray(value, dtype=dtype).tobytes())


def pred_probs_npz(rows: Rows, meta: ExportMeta, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The pred_probs export as an ``.npz`` (a ZIP of ``.npy`` files, read with
    ``np.load(path, allow_pickle=False)``): ``pred_probs`` (N x K float64), ``labels`` (N int64),
    ``label_quality`` (N float64), ``ids`` and ``classes`` (unicode arrays), ``out_of_sample``
    (a bool scalar). Written to a temporary file first, one row in memory at a time."""
    n, width, oos = 0, 1, False
    for r in rows():
        n += 1
        width = max(width, len(r["id"]))
        oos = oos or r.get("pred_probs_oos") is not None
    k = len(meta.classes)
    index = {c: i for i, c in enumerate(meta.classes)}
    cwidth = max([1, *(len(c) for c in meta.classes)])
    with tempfile.TemporaryFile() as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            _npy(zf, "pred_probs.npy", np.dtype("<f8"), (n, k), (pred_probs_row(r, meta.classes) for r in rows()))
            _npy(zf, "labels.npy", np.dtype("<i8"), (n,), (index[r["label"]] for r in rows()))
            _npy(zf, "label_quality.npy", np.dtype("<f8"), (n,), (r["label_quality"] for r in rows()))
            _npy(zf, "ids.npy", np.dtype(f"<U{width}"), (n,), (r["id"] for r in rows()))
            _npy(zf, "classes.npy", np.dtype(f"<U{cwidth}"), (k,), meta.classes)
            _npy(zf, "out_of_sample.npy", np.dtype("|b1"), (), [oos])
        tmp.seek(0)
        yield from iter(lambda: tmp.read(chunk), b"")


def export(fmt: str, rows: Rows, meta: ExportMeta) -> Iterator[bytes]:
    """The body of an export in ``fmt``; ``rows()`` returns a fresh iterable of label rows."""
    if fmt == "jsonl":
        return jsonl(rows())
    if fmt == "csv":
        return csv_rows(rows())
    if fmt == "labelstudio":
        return labelstudio(rows(), meta)
    if fmt == "argilla":
        return argilla(rows(), meta)
    if fmt == "fiftyone":
        return fiftyone(rows(), meta)
    if fmt == "pred_probs":
        return pred_probs(rows, meta)
    if fmt == "pred_probs_npz":
        return pred_probs_npz(rows, meta)
    raise ValueError(f"unknown export format {fmt}; one of {', '.join(FORMATS)}")


ANNOTATOR_FIELDS = ("annotator", "items", "accuracy", "confusion")


def annotators_csv(annotators: Iterable[dict]) -> str:
    """Per-annotator estimates as CSV: annotator, items, accuracy, confusion (a JSON object
    {true class: {label: probability}})."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(ANNOTATOR_FIELDS)
    for a in annotators:
        writer.writerow([a["annotator"], a["items"], a["accuracy"], _dump(a["confusion"])])
    return buf.getvalue()
