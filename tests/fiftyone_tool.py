"""Runs inside build/fiftyone-venv (FiftyOne's own environment): reads one JSON command on stdin,
does it with FiftyOne's own exporters and importers, prints one JSON answer line.

- {"op": "export", "type": "tree" | "labels", "dir": OUT, "samples": [{"path", "labels": [...]}]}:
  a dataset of those images, one Classification per sample (tree: one sample per image and label,
  so an image with several labels lands in several class folders) or Classifications (labels),
  written with FiftyOne's ImageClassificationDirectoryTree / FiftyOneImageClassificationDataset
  exporter.
- {"op": "import", "dir": DIR}: DIR read with FiftyOne's FiftyOneImageClassificationDataset
  importer; every sample's file name and label fields.
"""

from __future__ import annotations

import json
import os
import sys

import fiftyone as fo


def export(cmd: dict) -> dict:
    dataset = fo.Dataset()
    samples = []
    if cmd["type"] == "tree":
        for s in cmd["samples"]:
            for n, label in enumerate(s["labels"]):
                # a copy per label: FiftyOne keeps one label per sample in this layout
                path = s["copies"][n]
                samples.append(fo.Sample(filepath=path, ground_truth=fo.Classification(label=label)))
        dataset_type = fo.types.ImageClassificationDirectoryTree
    else:
        for s in cmd["samples"]:
            labels = [fo.Classification(label=lab) for lab in s["labels"]]
            field = fo.Classifications(classifications=labels) if len(labels) > 1 else labels[0]
            samples.append(fo.Sample(filepath=s["path"], ground_truth=field))
        dataset_type = fo.types.FiftyOneImageClassificationDataset
    dataset.add_samples(samples)
    dataset.export(export_dir=cmd["dir"], dataset_type=dataset_type, label_field="ground_truth")
    dataset.delete()
    return {"exported": len(samples)}


def load(cmd: dict) -> dict:
    dataset = fo.Dataset.from_dir(dataset_dir=cmd["dir"], dataset_type=fo.types.FiftyOneImageClassificationDataset)
    out = {}
    for sample in dataset:
        gt = sample["ground_truth"]
        out[os.path.basename(sample.filepath)] = {
            "label": gt.label,
            "confidence": gt.confidence,
            "attributes": {
                k: gt[k]
                for k in ("ambiguous", "candidates_suspect", "margin", "outside_mass", "label_quality")
                if gt.has_field(k)
            },
        }
    classes = dataset.default_classes or dataset.classes.get("ground_truth")
    dataset.delete()
    return {"samples": out, "classes": classes}


def main() -> None:
    cmd = json.loads(sys.stdin.read())
    answer = export(cmd) if cmd["op"] == "export" else load(cmd)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
