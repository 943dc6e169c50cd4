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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from candor.formats import LABEL_FORMATS

Rows = Callable[[], Iterable[dict]]

FORMATS = LABEL_FORMATS  # format -> (media type, file suffix)
FLAGS = ("ambiguous", "candidates_suspect")
SCALARS = ("label", "confidence", "margin", "outside_mass", "ambiguous", "candidates_suspect", "prior_label")
CSV_FIELDS = ("id", *SCALARS)
AGENT = "candor"


@dataclass(frozen=True)
class ExportMeta:
    """What the rows alone do not say: the dataset's classes (in order), the classifier's version
    (None when the job trained none) and the Label Studio control and object names."""

    classes: tuple[str, ...] = ()
    model_version: str | None = None
    from_name: str = "choice"
    to_name: str = "image"


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
    agreeing annotators as JSON in the last three columns."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*CSV_FIELDS, "posterior", "annotations", "agreed"])
    for row in rows:
        compact = {a["annotator"]: a["label"] for a in row.get("annotations") or ()}
        writer.writerow(
            [
                *(row.get(f) for f in CSV_FIELDS),
                json.dumps(row["posterior"]),
                json.dumps(compact),
                json.dumps(row.get("agreed", [])),
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
    }


def labelstudio_prediction(row: dict, meta: ExportMeta) -> dict:
    """A Label Studio prediction for one item. `task` is the item id: Candor keeps no Label Studio
    task id yet, so items uploaded with the task id as their id line up with their tasks."""
    return {
        "task": row["id"],
        "model_version": meta.model_version or AGENT,
        "score": row["confidence"],
        "result": [
            {
                "from_name": meta.from_name,
                "to_name": meta.to_name,
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
    """An Argilla 2.x record (id, metadata, suggestions) that adds Candor's suggestions to the
    record of the same id: `label` (single label, scored by the confidence) and `candidates` (multi
    label: the candidates, most probable first, each with its posterior)."""
    agent = f"{AGENT}-{meta.model_version}" if meta.model_version else AGENT
    ranked = sorted(row["posterior"].items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "id": row["id"],
        "metadata": {
            "ambiguous": row["ambiguous"],
            "candidates_suspect": row["candidates_suspect"],
            "margin": row["margin"],
            "outside_mass": row["outside_mass"],
        },
        "suggestions": [
            {
                "question_name": "label",
                "value": row["label"],
                "score": row["confidence"],
                "agent": agent,
                "type": "model",
            },
            {
                "question_name": "candidates",
                "value": [c for c, _ in ranked],
                "score": [p for _, p in ranked],
                "agent": agent,
                "type": "model",
            },
        ],
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
    """The item's posterior over every class in the dataset's order: the candidates' posterior,
    zero outside the candidate set (the row sums to 1)."""
    post = row["posterior"]
    return [post.get(c, 0.0) for c in classes]


def pred_probs(rows: Rows, meta: ExportMeta) -> Iterator[bytes]:
    """cleanlab's inputs as JSON: {"classes", "ids", "pred_probs": N x K, "label_quality": N}.
    In-sample: the posteriors come from the classifier trained on these same items. label_quality
    is the posterior of the chosen label (its confidence), the self-confidence of cleanlab's
    `get_label_quality_scores` with the chosen label as the given one."""
    yield b'{"classes":' + _dump(list(meta.classes)).encode() + b',"ids":'
    yield from _array(r["id"] for r in rows())
    yield b',"pred_probs":'
    yield from _array(pred_probs_row(r, meta.classes) for r in rows())
    yield b',"label_quality":'
    yield from _array(r["confidence"] for r in rows())
    yield b"}"


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
