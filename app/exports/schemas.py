"""JSON Schemas of the JSON export formats, for the OpenAPI document of the labels route."""

from __future__ import annotations

NUMBER = {"type": "number"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
FLAGS = {
    "type": "object",
    "properties": {
        "ambiguous": BOOLEAN,
        "candidates_suspect": BOOLEAN,
        "margin": NUMBER,
        "outside_mass": NUMBER,
        "label_quality": NUMBER,
    },
}

LABELSTUDIO = {
    "title": "LabelStudioPredictions",
    "description": "`format=labelstudio`: Label Studio predictions; `task` is the Label Studio task id the item was "
    "imported with (format=labelstudio imports), else the item id (a number when it is one)",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["task", "model_version", "score", "result", "meta"],
        "properties": {
            "task": {"anyOf": [{"type": "integer"}, STRING]},
            "model_version": STRING,
            "score": NUMBER,
            "result": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["from_name", "to_name", "type", "value"],
                    "properties": {
                        "from_name": STRING,
                        "to_name": STRING,
                        "type": {"const": "choices"},
                        "value": {
                            "type": "object",
                            "required": ["choices"],
                            "properties": {"choices": {"type": "array", "items": STRING}},
                        },
                    },
                },
            },
            "meta": {"type": "object"},
        },
    },
}

SUGGESTION = {
    "type": "object",
    "required": ["value", "score", "agent", "type"],
    "properties": {
        "value": {"anyOf": [STRING, {"type": "array", "items": STRING}]},
        "score": {"anyOf": [NUMBER, {"type": "array", "items": NUMBER}]},
        "agent": STRING,
        "type": {"const": "model"},
    },
}
ARGILLA = {
    "title": "ArgillaRecords",
    "description": "`format=argilla`: Argilla 2.x records in the SDK's JSON shape (`Record.to_dict`), suggestions "
    "keyed by question name: `label` (single label) and `candidates` (multi label)",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "fields", "metadata", "suggestions", "responses", "vectors"],
        "properties": {
            "id": STRING,
            "fields": {"type": "object"},
            "metadata": FLAGS,
            "suggestions": {"type": "object", "additionalProperties": SUGGESTION},
            "responses": {"type": "object"},
            "vectors": {"type": "object"},
        },
    },
}

FIFTYONE = {
    "title": "FiftyOneLabels",
    "description": "`format=fiftyone`: a FiftyOneImageClassificationDataset `labels.json`",
    "type": "object",
    "required": ["classes", "labels"],
    "properties": {
        "classes": {"type": "array", "items": STRING},
        "labels": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["label", "confidence", "attributes"],
                "properties": {"label": {"type": "integer"}, "confidence": NUMBER, "attributes": FLAGS},
            },
        },
    },
}

PRED_PROBS = {
    "title": "PredProbs",
    "description": "`format=pred_probs`: cleanlab's N x K pred_probs with the item ids and Candor's labels as class "
    "indices; out_of_sample: from k-fold trainings (cross_validation.folds) rather than in-sample",
    "type": "object",
    "required": ["classes", "ids", "labels", "pred_probs", "label_quality", "out_of_sample"],
    "properties": {
        "classes": {"type": "array", "items": STRING},
        "ids": {"type": "array", "items": STRING},
        "labels": {"type": "array", "items": {"type": "integer"}},
        "pred_probs": {"type": "array", "items": {"type": "array", "items": NUMBER}},
        "label_quality": {"type": "array", "items": NUMBER},
        "out_of_sample": BOOLEAN,
    },
}

JSON_FORMATS = {"anyOf": [LABELSTUDIO, ARGILLA, FIFTYONE, PRED_PROBS]}
