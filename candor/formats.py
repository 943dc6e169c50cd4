"""The formats of the labels route and of the imports route.

LABEL_FORMATS: name -> (media type, file suffix); the service writes them (app.exports), the
client and `candor remote labels` accept them. IMPORT_FORMATS: the ZIP layouts the imports route
reads (app.imports), name -> what it is; `Client.upload(..., format=)` and `candor remote run
--import-format` send them.
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

IMPORT_FORMATS: dict[str, str] = {
    "candor": "manifest.jsonl + images, or a folder of class folders (the default)",
    "labelstudio": "Label Studio JSON export + label_config.xml + the media under the paths the export references; "
    "each annotator's choices become annotations, the task id is kept",
    "fiftyone-tree": "FiftyOne ImageClassificationDirectoryTree: CLASS/image.ext, an image in several class folders "
    "is one candidate set",
    "fiftyone": "FiftyOne FiftyOneImageClassificationDataset: data/ + labels.json, a list of labels is a candidate set",
    "argilla": "Argilla 2.x export: records.json (+ .argilla/settings.json), submitted responses become annotations",
}
