"""The label export formats of the labels route: name -> (media type, file suffix).

The service writes them (app.exports), the client and `candor remote labels` accept them.
"""

from __future__ import annotations

LABEL_FORMATS: dict[str, tuple[str, str]] = {
    "jsonl": ("application/x-ndjson", "jsonl"),
    "csv": ("text/csv", "csv"),
    "labelstudio": ("application/json", "json"),
    "argilla": ("application/json", "json"),
    "fiftyone": ("application/json", "json"),
    "pred_probs": ("application/json", "json"),
    "pred_probs_npz": ("application/zip", "npz"),
}
