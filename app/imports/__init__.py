"""Dataset imports: one reader per ZIP layout, looked up by the imports route's ``format``.

A reader takes the open archive and the dataset's classes (in order) and returns the items as
:class:`app.datasets.service.Incoming`, each reading its image lazily. Readers only translate a
tool's layout into items; validation, de-duplication and all-or-nothing storage stay in
``app.datasets.service.ingest``. A reader raises ``Problem(422, ...)`` for an archive it cannot read
as a whole and ``InputError`` (from an item's ``read``) for one item's image.

The route, the CLI and the SDK take the format names from :data:`READERS`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from enum import Enum

from app.datasets.service import Incoming, incoming_from_zip
from app.imports import argilla, fiftyone, labelstudio

Reader = Callable[[zipfile.ZipFile, Sequence[str]], list[Incoming]]


def _candor(zf: zipfile.ZipFile, classes: Sequence[str]) -> list[Incoming]:
    return incoming_from_zip(zf)


# format -> reader; "candor" (manifest.jsonl, or an ImageFolder with a manifest) is the default.
READERS: dict[str, Reader] = {
    "candor": _candor,
    "fiftyone-tree": fiftyone.read_tree,
    "fiftyone": fiftyone.read_labels_json,
    "argilla": argilla.read_records,
    "labelstudio": labelstudio.read,
}

ImportFormat = Enum("ImportFormat", {name: name for name in READERS}, type=str)


def reader(name: str) -> Reader:
    return READERS[name]


FORMAT_DOCS = {
    "candor": "`manifest.jsonl` + images (or an ImageFolder with a manifest)",
    "fiftyone-tree": "FiftyOne's ImageClassificationDirectoryTree `CLASS/image.ext`; an image in several class "
    "folders is one item with those classes as candidates",
    "fiftyone": "FiftyOne's FiftyOneImageClassificationDataset, `data/` + `labels.json`; a list of labels is a "
    "candidate set",
    "labelstudio": "Label Studio's JSON export + `label_config.xml` (the classes are its `<Choices>`) + the media "
    "under the paths the export references; each annotator's choices become annotations, cancelled ones are skipped, "
    "`ground_truth` is kept and the task id stays with the item",
    "argilla": "an Argilla 2.x export (`records.json` from `dataset.records.to_json`, or a `Dataset.to_disk` folder); "
    "submitted responses become annotations, images come from the image field (data URI or a path in the ZIP)",
}
FORMATS_DOC = "the ZIP's layout: " + "; ".join(f"`{k}`: {v}" for k, v in FORMAT_DOCS.items() if k in READERS)
