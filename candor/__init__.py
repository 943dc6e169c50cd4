"""Candor's Python client.

from candor import Client

with Client("http://127.0.0.1:8000", api_key="...") as candor:
    ds = candor.create_dataset("shoes", ["sneaker", "sandal", "boot"])
    candor.upload(ds, "photos/")                 # a folder, a manifest.jsonl or a ZIP
    job = candor.start_job(ds).wait()            # progress bar; raises JobFailed if it fails
    for row in job.labels(flag="ambiguous"):
        print(row.id, row.label, row.confidence)
    print(candor.predict(job.classifier_id, "new.jpg")[0].label)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("candor")
except PackageNotFoundError:  # pragma: no cover - a source tree without the distribution installed
    __version__ = "0"

from candor.client import Client, image_bytes
from candor.errors import (
    BadRequest,
    CandorError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidSource,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
)
from candor.models import (
    Annotation,
    Annotator,
    CandidatePolicy,
    Classifier,
    ClassifierSummary,
    Dataset,
    DatasetDetail,
    DatasetSummary,
    IngestResult,
    Item,
    ItemOutcome,
    Job,
    JobProgress,
    JobSummary,
    LabelRow,
    Prediction,
    Scored,
    UploadResult,
)

__all__ = [
    "Annotation",
    "Annotator",
    "BadRequest",
    "CandidatePolicy",
    "CandorError",
    "Classifier",
    "ClassifierSummary",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "DatasetDetail",
    "DatasetSummary",
    "Forbidden",
    "IngestResult",
    "InvalidSource",
    "Item",
    "ItemOutcome",
    "Job",
    "JobFailed",
    "JobProgress",
    "JobSummary",
    "LabelRow",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "RateLimited",
    "Scored",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "UploadResult",
    "ValidationFailed",
    "WaitTimeout",
    "__version__",
    "image_bytes",
]
