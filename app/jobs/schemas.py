from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page
from app.datasets.schemas import Annotation
from app.ml.config import CleanConfig

JobState = Literal["queued", "featurizing", "training", "succeeded", "failed", "cancelling", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "6f1c2a8e-0000-4000-8000-000000000000",
                    "config": {"objective": {"name": "proden"}, "train": {"epochs": 20, "seed": 1}},
                }
            ]
        },
    )
    dataset_id: uuid.UUID
    config: CleanConfig = Field(default_factory=CleanConfig, description="the engine's typed config; defaults apply")


class JobProgress(BaseModel):
    stage: JobState | None = Field(
        None, description="what the job is doing: the state it is in ('featurizing': images done of total)"
    )
    done: int | None = Field(
        None, description="featurizing: images with features so far; cross-validation (training, no epoch): folds done"
    )
    total: int | None = Field(
        None, description="featurizing: images of the job; cross-validation (training, no epoch): folds"
    )
    epoch: int | None = Field(None, description="training: epochs finished")
    epochs: int | None = Field(None, description="training: epochs to run")
    last_loss: float | None = Field(None, description="training: the loss of the last step")
    eta_seconds: float | None = Field(None, description="training: estimated seconds left")


class MetricsBase(BaseModel):
    """Label-free summaries of a finished job: computed without any true label. The engine may add
    fields; those listed here are stable."""

    model_config = ConfigDict(extra="allow")
    items: int | None = Field(None, description="items cleaned")
    classes: int | None = Field(None, description="classes of the dataset")
    mean_candidates: float | None = Field(None, description="mean candidate-set size")
    prior_top1_in_candidates: float | None = Field(
        None, description="share of items whose zero-shot top-1 class is among their candidates"
    )
    chance_in_candidates: float | None = Field(None, description="the same share for a uniform guess: mean |S|/K")
    prior_candidate_mass: float | None = Field(None, description="mean zero-shot posterior mass on the candidates")
    agreement_with_prior: float | None = Field(
        None, description="share of items whose cleaned label is the zero-shot prior's choice among the candidates"
    )
    candidate_mass: float | None = Field(None, description="mean cleaned posterior mass on the candidates")
    selection: dict[str, Any] | None = Field(None, description="how the epoch kept was chosen (label-free)")


class JobMetrics(MetricsBase):
    history: list[dict[str, Any]] | None = Field(None, description="one record per training epoch, oldest first")


class JobOut(BaseModel):
    id: uuid.UUID
    dataset_id: uuid.UUID
    state: JobState
    config: CleanConfig = Field(description="the job's config with every default filled in")
    config_hash: str
    progress: JobProgress
    error: str | None
    attempt: int = Field(description="deliveries of the job so far: 1, plus one each time the reaper drove it on")
    heartbeat_at: datetime | None = Field(
        None, description="the last sign of life from whatever works on the job; the reaper acts when it is stale"
    )
    classifier_id: uuid.UUID | None = None
    metrics: JobMetrics | None = Field(None, description="set when the job has succeeded")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None


class JobSummary(BaseModel):
    """A job in a list: state, progress and timestamps, without its config and metrics (the detail
    route has those)."""

    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    dataset_id: uuid.UUID
    state: JobState
    config_hash: str
    progress: JobProgress
    error: str | None
    attempt: int
    classifier_id: uuid.UUID | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(Page[JobSummary]):
    pass


class LabelRow(BaseModel):
    """One item's cleaned label: a line of the `jsonl` format, a row of the `csv` format (there
    `posterior` is a JSON object in one column)."""

    id: str = Field(description="the item's id")
    label: str = Field(description="the candidate Candor believes in")
    confidence: float = Field(description="its probability among the candidates")
    posterior: dict[str, float] = Field(description="probability of each candidate (sums to one)")
    margin: float = Field(description="confidence minus the runner-up's probability (1 for one candidate)")
    outside_mass: float = Field(description="the model's probability mass outside the candidates")
    ambiguous: bool = Field(description="margin below config.output.ambiguous_margin")
    candidates_suspect: bool = Field(description="outside_mass above config.output.suspect_outside_mass")
    prior_label: str | None = Field(description="the zero-shot prior's choice among the candidates")
    annotations: list[Annotation] = Field(
        description="the item's annotations as uploaded (empty when it had none); "
        "in `csv` a JSON object annotator: label"
    )
    agreed: list[str] = Field(description="the annotators whose label is `label`; in `csv` a JSON list")
    label_quality: float = Field(
        description="cleanlab's label quality score of `label` (self-confidence: its probability in the item's "
        "pred_probs row; out-of-sample when the job ran with cross_validation.folds)"
    )
    pred_probs_oos: list[float] | None = Field(
        None,
        description="with cross_validation.folds: the item's out-of-sample probabilities over all classes (dataset "
        "order) from a training on the other folds, which never saw it; null otherwise",
    )
    source: dict[str, Any] | None = Field(
        None,
        description="where the item came from (a Label Studio import: `{tool, task, from_name, to_name}`); "
        "null otherwise; not in `csv`",
    )
    reviewed: bool = Field(False, description="a person has decided on this item (the latest decision counts)")
    reviewed_label: str | None = Field(None, description="the class the reviewer chose; null when not reviewed")
    reviewed_none_of_these: bool = Field(False, description="the reviewer said the item is none of its candidates")


class AnnotatorOut(BaseModel):
    """What a job estimated about one annotator from the items' votes."""

    annotator: str = Field(description="the annotator's name as uploaded")
    items: int = Field(description="items of the job this annotator labelled")
    accuracy: float = Field(
        description="estimated share of this annotator's labels that are right: the mean, over their labels, of "
        "the job's posterior probability of the label they gave"
    )
    confusion: dict[str, dict[str, float]] = Field(
        description="estimated P(gives label | true class): {true class: {label: probability}}, entries below "
        "0.0005 left out; in `csv` a JSON object"
    )


class AnnotatorList(BaseModel):
    job_id: str
    classes: list[str]
    annotators: list[AnnotatorOut] = Field(description="by name; empty when the job's items carry no annotations")
