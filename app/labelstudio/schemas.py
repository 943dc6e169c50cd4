"""The bodies Label Studio sends its ML backends (label-studio-ml-backend's api.py) and Candor's
answers in the shapes Label Studio reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Project = int | str | None


class LabelStudioSetup(BaseModel):
    """`POST /setup`: the project (`"<id>.<created_at timestamp>"`), its labeling config and
    whatever the connection's extra params hold; older Label Studio versions also send its
    `hostname` and an `access_token`."""

    model_config = ConfigDict(extra="allow")
    project: Project = Field(None, description="Label Studio's `<project id>.<timestamp>`")
    schema_: str | None = Field(None, alias="schema", description="the project's labeling config (XML)")
    hostname: str | None = Field(None, description="Label Studio's URL (older versions)")
    access_token: str | None = Field(None, description="a Label Studio token that reads the task images")
    model_version: str | None = None
    extra_params: dict[str, Any] | str | None = Field(
        None,
        description="the connection's extra params: `url` (Label Studio's URL), `token` (a Label Studio token: a "
        "personal access token or a legacy token) and `train` (true: annotation webhooks start a new job)",
    )


class LabelStudioSetupAnswer(BaseModel):
    model_version: str


class LabelStudioPredictRequest(BaseModel):
    """`POST /predict`: the tasks to pre-annotate, the project and its labeling config."""

    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(max_length=256, description="Label Studio tasks (`{id, data}`)")
    project: Project = None
    label_config: str | None = Field(None, description="the project's labeling config (XML)")
    model_version: str | None = None
    params: dict[str, Any] | None = None


class LabelStudioChoicesResult(BaseModel):
    from_name: str
    to_name: str
    type: str = "choices"
    value: dict[str, list[str]]


class LabelStudioTaskPrediction(BaseModel):
    """One task's prediction, as label-studio-ml-backend's PredictionValue."""

    result: list[LabelStudioChoicesResult]
    score: float = Field(description="the chosen class's probability among the config's choices")
    model_version: str = Field(description="the classifier's version")


class LabelStudioPredictions(BaseModel):
    results: list[LabelStudioTaskPrediction] = Field(description="one prediction per task, in the tasks' order")


class LabelStudioHealth(BaseModel):
    status: str = "UP"
    model_class: str = "Candor"
    model_version: str


class LabelStudioMetrics(BaseModel):
    """label-studio-ml-backend's /metrics: an empty object."""


class LabelStudioWebhookAnswer(BaseModel):
    status: str = Field(description="`ok`, or `Unknown event` for an action that does not train")
    job_id: str | None = Field(None, description="the job the event started (or the one already running)")
    item: str | None = Field(
        None,
        description="what an annotation event did to the dataset: `updated` (the task's item took the annotator's "
        "new vote), `created` (a task the dataset did not hold became an item), `unchanged`, or `skipped: <why>`",
    )
