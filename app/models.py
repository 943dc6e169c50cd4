"""Every table, imported in one place for Alembic's metadata."""

from app.classifiers.models import ClassifierRow
from app.core.db import Base
from app.datasets.models import Dataset, ImageBlob, Item
from app.jobs.models import FeatureRow, Job, JobAnnotator, JobChunk, JobResult
from app.labelstudio.models import LabelStudioConnection
from app.review.models import Review
from app.tenants.models import ApiKey, IdempotencyRecord, Tenant
from app.ui.models import UiSecret, UiSignin
from app.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "ApiKey",
    "Base",
    "ClassifierRow",
    "Dataset",
    "FeatureRow",
    "IdempotencyRecord",
    "ImageBlob",
    "Item",
    "Job",
    "JobAnnotator",
    "JobChunk",
    "JobResult",
    "LabelStudioConnection",
    "Review",
    "Tenant",
    "UiSecret",
    "UiSignin",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
