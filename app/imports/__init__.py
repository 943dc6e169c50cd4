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
from app.imports import labelstudio

Reader = Callable[[zipfile.ZipFile, Sequence[str]], list[Incoming]]


def _candor(zf: zipfile.ZipFile, classes: Sequence[str]) -> list[Incoming]:
    return incoming_from_zip(zf)


# format -> reader; "candor" (manifest.jsonl, or an ImageFolder with a manifest) is the default.
READERS: dict[str, Reader] = {
    "candor": _candor,
    "labelstudio": labelstudio.read,
}

ImportFormat = Enum("ImportFormat", {name: name for name in READERS}, type=str)


def reader(name: str) -> Reader:
    return READERS[name]
