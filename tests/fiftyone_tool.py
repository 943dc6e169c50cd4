"""Runs inside build/fiftyone-venv (FiftyOne's own environment): reads one JSON command on stdin,
does it with FiftyOne's own exporters and importers, prints one JSON answer line.

The dataset importers and exporters are driven directly (``with importer: for sample in
importer``, ``exporter.export_sample``), as ``Dataset.from_dir`` and ``Dataset.export`` drive them,
but without a ``fo.Dataset``: that needs FiftyOne's MongoDB, whose binary fiftyone-db downloads
from outside the package index at install time.

- {"op": "export", "type": "tree" | "labels", "dir": OUT, "samples": [...]}: ImageClassificationDirectoryTree
  (one sample per image copy and label: an image with several labels lands in several class
  folders) or FiftyOneImageClassificationDataset (Classifications: a list per image).
- {"op": "import", "dir": DIR}: DIR read with FiftyOne's FiftyOneImageClassificationDataset
  importer; every sample's file name, label, confidence and attributes.
"""

from __future__ import annotations

import json
import os
import sys

import fiftyone as fo
import fiftyone.utils.data as foud

ATTRIBUTES = ("ambiguous", "candidates_suspect", "margin", "outside_mass", "label_quality")


def export(cmd: dict) -> dict:
    n = 0
    if cmd["type"] == "tree":
        exporter = foud.ImageClassificationDirectoryTreeExporter(cmd["dir"])
        with exporter:
            for s in cmd["samples"]:
                for copy, label in zip(s["copies"], s["labels"], strict=True):
                    exporter.export_sample(copy, fo.Classification(label=label))
                    n += 1
    else:
        exporter = foud.FiftyOneImageClassificationDatasetExporter(cmd["dir"], classes=cmd.get("classes"))
        with exporter:
            for s in cmd["samples"]:
                labels = [fo.Classification(label=lab) for lab in s["labels"]]
                field = fo.Classifications(classifications=labels) if len(labels) > 1 else labels[0]
                exporter.export_sample(s["path"], field)
                n += 1
    return {"exported": n}


def load(cmd: dict) -> dict:
    importer = foud.FiftyOneImageClassificationDatasetImporter(cmd["dir"])
    out = {}
    with importer:
        info = importer.get_dataset_info()
        for image_path, _metadata, label in importer:
            out[os.path.basename(image_path)] = {
                "label": label.label,
                "confidence": label.confidence,
                "attributes": {k: label[k] for k in ATTRIBUTES if label.has_field(k)},
            }
    return {"samples": out, "classes": info.get("classes")}


def main() -> None:
    cmd = json.loads(sys.stdin.read())
    answer = export(cmd) if cmd["op"] == "export" else load(cmd)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
