"""Typed, immutable configuration of a cleaning job.

Every knob of the engine lives here, with the product's defaults. A config is plain data: it is
validated once, stored with each job as JSON, and hashed into the classifier's version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ObjectiveName = Literal["naive", "cc", "rc", "proden", "lws", "cavl", "pop"]
OBJECTIVES: tuple[str, ...] = ("naive", "cc", "rc", "proden", "lws", "cavl", "pop")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptConfig(_Frozen):
    """CoOp context vectors: one shared context, class token at the end."""

    n_ctx: int = Field(16, ge=1, le=64, description="number of learnable context vectors")
    ctx_init: str | None = Field(
        None,
        description="words whose token embeddings initialise the context (n_ctx becomes their "
        "token count); None draws N(0, 0.02^2)",
    )


class ObjectiveConfig(_Frozen):
    """Partial-label objective and its own hyper-parameters (method.md §4)."""

    name: ObjectiveName = "proden"
    naive_variant: Literal["uniform", "cc"] = Field(
        "uniform", description="NAIVE as -sum (s/|S|) log p ('uniform') or as CC ('cc')"
    )
    lws_weight: float = Field(2.0, ge=0.0, description="LWS beta: weight of the non-candidate term")
    lws_loss: Literal["log", "sigmoid"] = Field(
        "log", description="LWS per-class loss: -log p / -log(1-p) ('log') or the paper's sigmoid psi(z)"
    )
    pop_warmup: int = Field(20, ge=0, description="POP: epochs before candidate sets are purified")
    pop_window: int = Field(5, ge=1, description="POP: epochs of confidences averaged for purification")
    pop_theta: float = Field(1e-3, gt=0.0, description="POP: initial purification threshold")
    pop_theta_growth: float = Field(1e-3, ge=0.0, description="POP: theta <- theta (1 + growth)")
    pop_theta_max: float = Field(0.01, gt=0.0, description="POP: theta stops growing here")


class MixConfig(_Frozen):
    """How the learnable and the handcrafted posteriors are mixed into the alignment target."""

    schedule: Literal["constant", "linear", "cosine"] = "linear"
    alpha_start: float = Field(0.5, ge=0.0, le=1.0, description="weight of the learnable prompt at the start")
    alpha_end: float = Field(1.0, ge=0.0, le=1.0, description="weight of the learnable prompt at the end")
    prior_weight_max: float = Field(1.0, ge=0.0, le=1.0, description="cap on the handcrafted prompt's weight 1 - alpha")
    space: Literal["prob", "logit"] = Field("prob", description="arithmetic (prob) or geometric (logit) mix")
    temperature: float = Field(1.0, gt=0.0, description="temperature applied to both branches' logits")


class AlignmentConfig(_Frozen):
    """Prompt alignment (Zhang et al., DASFAA 2025) on top of any PLL objective."""

    enabled: bool = True
    auto_trust: bool = Field(
        True,
        description="cap the prior's weight by a label-free estimate of its accuracy (see docs/method.md); "
        "off = trust it as far as mix.prior_weight_max allows",
    )
    trust_power: float = Field(
        2.0, gt=0.0, le=4.0, description="auto trust: the cap is (excess accuracy of the prior) ** trust_power"
    )
    mode: Literal["target", "extra_loss", "both"] = Field(
        "target",
        description="'target': the mixed posterior replaces the objective's own confidence update; "
        "'extra_loss': add lambda * CE(m, p_learnable); objectives without confidences (NAIVE, CC) "
        "always use 'extra_loss'",
    )
    lam: float = Field(1.0, ge=0.0, description="weight of the extra alignment loss")
    mix: MixConfig = MixConfig()


class TrainConfig(_Frozen):
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(0.002, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_epochs: int = Field(0, ge=0, description="epochs at constant lr 1e-5 before the cosine schedule")
    seed: int = 0


class SelectionConfig(_Frozen):
    """Label-free model choice on held-out candidate-labelled items (never trained on)."""

    holdout_fraction: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="share of items held out of training to score epochs and prior mixes (0: off; "
        "used only when at least 100 items would be held out)",
    )
    best_epoch: bool = Field(True, description="keep the epoch whose held-out estimated accuracy is highest")
    predict_prior_weights: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = Field(
        (0.0, 0.25, 0.5),
        min_length=1,
        description="candidate weights of the handcrafted prior in the final posterior; the held-out "
        "estimate picks one ((0.0,) never mixes the prior in)",
    )


class OutputConfig(_Frozen):
    """Thresholds of the per-item flags."""

    ambiguous_margin: float = Field(
        0.2, ge=0.0, le=1.0, description="ambiguous when p(top) - p(runner-up) within the candidates is below"
    )
    suspect_outside_mass: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="candidates_suspect when the model puts more than this mass outside the candidate set",
    )


class FeatureConfig(_Frozen):
    view: Literal["plain", "invert"] = Field(
        "plain", description="image view fed to the image tower; 'invert' is 255 - pixel (light-on-dark data)"
    )
    batch_size: int = Field(64, ge=1, le=4096)


class CleanConfig(_Frozen):
    """Everything a cleaning job needs besides its data."""

    backbone: str = Field("offline", description="'offline', 'tiny', or 'openclip:MODEL[:PRETRAINED_OR_FILE]'")
    templates: tuple[str, ...] = Field(
        ("a photo of a {}.",), min_length=1, description="handcrafted prompt template(s); features averaged"
    )
    prompt: PromptConfig = PromptConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    train: TrainConfig = TrainConfig()
    features: FeatureConfig = FeatureConfig()
    selection: SelectionConfig = SelectionConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _check_templates(self) -> CleanConfig:
        for t in self.templates:
            if t.count("{}") != 1:
                raise ValueError(f"template {t!r} must contain exactly one '{{}}' for the class name")
        return self

    def digest(self) -> str:
        """A stable hash of the config, used in the classifier's version."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(self, **sections: dict) -> CleanConfig:
        """Return a copy with nested sections updated from plain dicts (CLI flags, API fields)."""
        data = self.model_dump(mode="json")
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = _deep_merge(data[key], value)
            else:
                data[key] = value
        return CleanConfig.model_validate(data)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
