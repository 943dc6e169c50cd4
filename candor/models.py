"""Typed answers of the Candor API. Unknown fields are kept (a newer service may add some), and a
timestamp without a zone is read as UTC. Objects returned by a ``Client`` remember it, so that
``job.wait()``, ``dataset.upload(...)`` or ``classifier.predict(...)`` work on them directly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, PrivateAttr

if TYPE_CHECKING:
    from candor.client import Client, ImageInput, Source

JobState = Literal["queued", "featurizing", "training", "succeeded", "failed", "cancelling", "cancelled"]
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Timestamp = Annotated[datetime, AfterValidator(_utc)]
T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Bound(Model):
    """A resource that remembers the client that fetched it."""

    _client: Client | None = PrivateAttr(default=None)

    def _bound(self) -> Client:
        if self._client is None:
            raise RuntimeError(f"this {type(self).__name__} was not fetched by a Client; use the client's methods")
        return self._client


class Page(Model, Generic[T]):
    """One keyset page of a list: pass ``next_cursor`` back until it is None."""

    items: list[T]
    next_cursor: str | None = None


# ---- datasets ------------------------------------------------------------------------------------
class DatasetSummary(Bound):
    id: uuid.UUID
    name: str
    class_count: int
    created_at: Timestamp


class CandidatePolicy(Model):
    """How a dataset turns items' annotations into candidate sets."""

    min_votes: int = 1
    ground_truth_wins: bool = True


class Dataset(Bound):
    id: uuid.UUID
    name: str
    classes: list[str]
    candidate_policy: CandidatePolicy = CandidatePolicy()
    created_at: Timestamp

    def upload(self, source: Source, **kwargs: Any) -> UploadResult:
        """``Client.upload`` into this dataset."""
        return self._bound().upload(self, source, **kwargs)

    def start_job(self, config: dict[str, Any] | BaseModel | None = None) -> Job:
        """``Client.start_job`` on this dataset."""
        return self._bound().start_job(self, config)


class DatasetDetail(Dataset):
    item_count: int
    mean_candidates: float | None = None
    class_histogram: dict[str, int] = {}


class Annotation(Model):
    """One annotator's label for an item; ``ground_truth`` marks a reviewed label."""

    annotator: str
    label: str
    ground_truth: bool = False


class Item(Model):
    id: str
    image_sha256: str
    candidates: list[str]
    annotations: list[Annotation] = []
    source: dict[str, Any] | None = None  # a Label Studio import's {tool, task, project, from_name, to_name}
    created_at: Timestamp


class ItemOutcome(Model):
    """What an upload did with one item: ``index`` is its position in the upload."""

    index: int
    id: str | None = None
    status: Literal["created", "unchanged", "rejected"]
    reason: str | None = None


class IngestResult(Model):
    created: int
    unchanged: int
    items: list[ItemOutcome]


class UploadResult(Model):
    """The outcome of ``Client.upload``: every batch's items, indexed by their position in the
    upload. Items of a batch the service answered from its Idempotency-Key store (a re-run) count
    as ``unchanged``: this upload stored nothing new for them."""

    created: int = 0
    unchanged: int = 0
    batches: int = 0
    replayed_batches: int = 0
    items: list[ItemOutcome] = []


# ---- jobs ----------------------------------------------------------------------------------------
class JobProgress(Model):
    stage: str | None = None
    done: int | None = None
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    last_loss: float | None = None
    eta_seconds: float | None = None


class JobSummary(Bound):
    id: uuid.UUID
    dataset_id: uuid.UUID
    state: JobState
    config_hash: str | None = None
    progress: JobProgress = JobProgress()
    error: str | None = None
    attempt: int | None = None
    classifier_id: uuid.UUID | None = None
    created_at: Timestamp
    updated_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def refresh(self) -> Job:
        return self._bound().get_job(self.id)

    def wait(self, **kwargs: Any) -> Job:
        """``Client.wait`` for this job."""
        return self._bound().wait(self, **kwargs)

    def cancel(self) -> Job:
        return self._bound().cancel_job(self.id)

    def labels(self, **filters: Any) -> Iterator[LabelRow]:
        """``Client.labels`` of this job."""
        return self._bound().labels(self.id, **filters)

    def annotators(self) -> list[Annotator]:
        """``Client.annotators`` of this job."""
        return self._bound().annotators(self.id)

    def classifier(self) -> Classifier:
        if self.classifier_id is None:
            raise RuntimeError(f"job {self.id} has no classifier (it is {self.state})")
        return self._bound().get_classifier(self.classifier_id)


class Job(JobSummary):
    config: dict[str, Any] = {}
    heartbeat_at: Timestamp | None = None
    metrics: dict[str, Any] | None = None
    cancel_requested_at: Timestamp | None = None


class LabelRow(Model):
    """One cleaned label: the posterior is over the item's candidates."""

    id: str
    label: str
    confidence: float
    posterior: dict[str, float]
    margin: float | None = None
    outside_mass: float | None = None
    ambiguous: bool = False
    candidates_suspect: bool = False
    prior_label: str | None = None
    annotations: list[Annotation] = []
    agreed: list[str] = []
    label_quality: float | None = None
    reviewed: bool = False
    reviewed_label: str | None = None
    reviewed_none_of_these: bool = False
    pred_probs_oos: list[float] | None = None
    source: dict[str, Any] | None = None


class Annotator(Model):
    """What a job estimated about one annotator: items labelled, accuracy, and the confusion
    {true class: {given label: probability}}."""

    annotator: str
    items: int
    accuracy: float
    confusion: dict[str, dict[str, float]] = {}


# ---- classifiers ---------------------------------------------------------------------------------
class ClassifierSummary(Bound):
    id: uuid.UUID
    job_id: uuid.UUID
    dataset_id: uuid.UUID
    version: str
    backbone: str
    backbone_id: str
    class_count: int
    created_at: Timestamp

    def predict(self, images: ImageInput, **kwargs: Any) -> list[Prediction]:
        """``Client.predict`` with this classifier."""
        return self._bound().predict(self.id, images, **kwargs)

    def download(self, folder: str | Path) -> Path:
        """``Client.download_classifier`` of this classifier."""
        return self._bound().download_classifier(self.id, folder)


class Classifier(ClassifierSummary):
    classes: list[str]
    metrics: dict[str, Any] = {}
    class_count: int | None = None  # type: ignore[assignment]  # the detail has the class list instead


class Scored(Model):
    label: str
    p: float


class Prediction(Model):
    """``index`` is the image's position in the images given to ``predict``."""

    index: int
    label: str
    top: list[Scored]
