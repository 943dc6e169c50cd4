"""Label Studio's files as its JSON export writes them, for the import tests and the end-to-end
script: a labeling config with an image and single choices, tasks whose annotators disagree."""

from __future__ import annotations

import io
import json
import zipfile

CLASSES = ["coat", "shirt", "dress"]


def label_config(choices=CLASSES, from_name: str = "garment", to_name: str = "photo", key: str = "img") -> str:
    options = "\n".join(f'    <Choice value="{c}"/>' for c in choices)
    return (
        "<View>\n"
        f'  <Image name="{to_name}" value="${key}"/>\n'
        f'  <Choices name="{from_name}" toName="{to_name}" choice="single">\n{options}\n  </Choices>\n'
        "</View>\n"
    )


def annotation(ann_id: int, user, choice: str | list[str], *, cancelled=False, ground_truth=False, from_name="garment"):
    """One annotation of Label Studio's JSON export."""
    choices = choice if isinstance(choice, list) else [choice]
    return {
        "id": ann_id,
        "completed_by": user,
        "was_cancelled": cancelled,
        "ground_truth": ground_truth,
        "result": [
            {
                "id": f"r{ann_id}",
                "from_name": from_name,
                "to_name": "photo",
                "type": "choices",
                "origin": "manual",
                "value": {"choices": choices},
            }
        ],
        "lead_time": 3.2,
        "created_at": "2026-11-29T10:00:00.000000Z",
        "updated_at": "2026-11-29T10:00:00.000000Z",
    }


def task(task_id: int, url: str, annotations: list[dict], project: int = 4, key: str = "img") -> dict:
    return {
        "id": task_id,
        "data": {key: url},
        "annotations": annotations,
        "predictions": [],
        "project": project,
        "meta": {},
        "created_at": "2026-11-29T09:00:00.000000Z",
        "updated_at": "2026-11-29T10:00:00.000000Z",
        "inner_id": task_id,
        "total_annotations": len(annotations),
        "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
    }


def export_zip(tasks: list[dict], media: dict[str, bytes], config: str | None = None, name="export.json") -> bytes:
    """A ZIP of the export (``name``), ``label_config.xml`` (unless config is "") and the media."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, json.dumps(tasks))
        if config != "":
            zf.writestr("label_config.xml", config or label_config())
        for path, data in media.items():
            zf.writestr(path, data)
    return buf.getvalue()
