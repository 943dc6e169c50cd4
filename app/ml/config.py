"""Typed, immutable configuration of a cleaning job.

Every knob of the engine lives here, with the product's defaults. A config is plain data: it is
validated once, stored with each job as JSON, and hashed into the classifier's version.
"""

from __future__ import annotations

import hashlib
import json
from string import Formatter
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.ml.backbones.registry import parse_spec, spec_help

# The objectives, their names and their config sections come from one registry (as data).
from app.ml.objective_registry import OBJECTIVES, ObjectiveConfig, ObjectiveName  # noqa: F401 (re-exported)

# torch.manual_seed and torch.Generator.manual_seed accept exactly this range (a RuntimeError
# otherwise); tests/test_job_config.py checks both ends against torch itself.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1
# Learning rates above this only diverge: the context vectors are token embeddings of norm ~1.
LR_MAX = 1.0


def check_text(value: str, what: str) -> str:
    """Text that can be stored and tokenised: no NUL character, no lone UTF-16 surrogate."""
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} contains a lone surrogate at position {exc.start}") from None
    return value


def check_template(template: str, index: int | None = None) -> str:
    """A prompt template has exactly one bare ``{}`` placeholder and formats cleanly."""
    what = "template" if index is None else f"templates[{index}]"
    check_text(template, what)
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid format string ({exc}); write the class name as {{}}") from None
    if fields != [("", "", None)]:
        raise ValueError(
            f"{what} must contain exactly one bare {{}} placeholder for the class name and no other replacement "
            f"field (found {len(fields)}); write literal braces as {{{{ and }}}}"
        )
    try:
        template.format("x")
    except (ValueError, IndexError, KeyError) as exc:  # pragma: no cover - parse() above catches these
        raise ValueError(f"{what} does not format with a class name ({exc})") from None
    return template


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class PromptConfig(_Frozen):
    """CoOp context vectors: one shared context, class token at the end."""

    n_ctx: int = Field(16, ge=1, le=64, description="number of learnable context vectors")
    ctx_init: str | None = Field(
        None,
        description="words whose token embeddings initialise the context (n_ctx becomes their "
        "token count); None draws N(0, 0.02^2)",
    )

    @field_validator("ctx_init")
    @classmethod
    def _check_ctx_init(cls, value: str | None) -> str | None:
        if value is not None:
            check_text(value, "ctx_init")
            if not value.strip():
                raise ValueError("ctx_init is blank; leave it out (null) for a random context")
        return value


class MixConfig(_Frozen):
    """How the learnable and the handcrafted posteriors are mixed into the alignment target."""

    schedule: Literal["constant", "linear", "cosine"] = "linear"
    alpha_start: float = Field(0.5, ge=0.0, le=1.0, description="weight of the learnable prompt at the start")
    alpha_end: float = Field(1.0, ge=0.0, le=1.0, description="weight of the learnable prompt at the end")
    prior_weight_max: float = Field(1.0, ge=0.0, le=1.0, description="cap on the handcrafted prompt's weight 1 - alpha")
    space: Literal["prob", "logit"] = Field("prob", description="arithmetic (prob) or geometric (logit) mix")
    temperature: float = Field(1.0, ge=0.01, le=100.0, description="temperature applied to both branches' logits")


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
    mode: Literal["paper", "target", "extra_loss", "both"] = Field(
        "target",
        description="'paper': the paper's rule (zhangzf01/CoOpPLL trainers/base_trainer/palace.py): the objective "
        "runs unchanged and L_pll.detach() / L_align.detach() * CE(t, p_learnable) is added, t the handcrafted "
        "posterior within the candidates; with auto_trust that weight is multiplied by the prior's trust cap "
        "(auto_trust off and mix.prior_weight_max = 1: the paper exactly; the weight is also multiplied by "
        "mix.prior_weight_max, the rest of mix.* is not used). Candor's extensions: 'target': the mixed "
        "posterior m replaces the objective's own confidence update; 'extra_loss': add lam * CE(m, p_learnable); "
        "'both'; objectives without confidences (NAIVE, CC) use 'extra_loss' in place of 'target'",
    )
    lam: float = Field(1.0, ge=0.0, le=100.0, description="weight of the extra alignment loss ('extra_loss', 'both')")
    mix: MixConfig = MixConfig()


class TrainConfig(_Frozen):
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(0.002, gt=0.0, le=LR_MAX, description=f"peak learning rate, in (0, {LR_MAX:g}]")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0, le=1000, description="epochs at constant lr 1e-5 before the cosine schedule")
    lr_schedule: Literal["cosine_step", "cosine_epoch"] = Field(
        "cosine_step",
        description="'cosine_step': cosine from lr to 0 over the steps after warm-up; 'cosine_epoch': CoOp's (Dassl's) "
        "cosine per epoch, lr constant within an epoch, 0.5 lr (1 + cos(pi e / epochs)) at the e-th epoch after "
        "warm-up",
    )
    seed: int = Field(0, ge=SEED_MIN, le=SEED_MAX, description="seed of every random draw (torch's range)")


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


class VotesConfig(_Frozen):
    """Annotators' votes as evidence (app/ml/crowd.py, docs/method.md). Used only when items carry
    annotations; a job without any is trained exactly as before."""

    enabled: bool = Field(True, description="use the votes when items carry annotations (off: the union only)")
    model: Literal["adapter", "none"] = Field(
        "adapter",
        description="the item model inside the EM: 'adapter' (a linear head on the cached image features, fitted "
        "out of fold to the current posterior) or 'none' (Dawid-Skene: a class prior only)",
    )
    rounds: int = Field(5, ge=1, le=50, description="EM rounds")
    smoothing: float = Field(
        10.0,
        ge=0.0,
        le=10000.0,
        description="pseudo-votes per confusion row drawn toward the group-aware one-coin prior (the "
        "annotator's accuracy on the diagonal, everyone's errors on that class off it)",
    )
    folds: int = Field(5, ge=2, le=20, description="'adapter': folds of the out-of-fold fit")
    l2: float = Field(1e-4, ge=0.0, le=10.0, description="'adapter': L2 penalty on the head's weights")
    steps: int = Field(100, ge=1, le=1000, description="'adapter': L-BFGS iterations per fit")
    teacher_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of the vote posterior in the prompt's training target (0: the prompt trains on the "
        "candidate sets alone; the job's labels still come from the votes)",
    )
    min_posterior: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="a class the vote posterior gives at least this probability joins the item's set for training "
        "and for the label, even when no annotator chose it",
    )


PresetName = Literal["offline", "coop"]
# Training recipes as data: a preset fills the fields it names unless the config sets them itself.
PRESETS: dict[str, dict[str, dict]] = {
    # Candor's defaults, tuned on the offline backbone (docs/results.md).
    "offline": {
        "prompt": {"n_ctx": 16},
        "train": {
            "optimizer": "adamw",
            "lr": 0.002,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "warmup_epochs": 0,
            "lr_schedule": "cosine_step",
            "batch_size": 32,
        },
    },
    # CoOp's recipe (KaiyangZhou/CoOp configs/trainers/CoOp/rn50.yaml with Dassl's optimiser defaults), which
    # the paper's code (zhangzf01/CoOpPLL) inherits: SGD, momentum 0.9, weight decay 5e-4, one warm-up epoch at
    # 1e-5, cosine per epoch, 16 context vectors, batch 32. Epochs are not part of it (CoOp: 50-200).
    "coop": {
        "prompt": {"n_ctx": 16},
        "train": {
            "optimizer": "sgd",
            "lr": 0.002,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "warmup_epochs": 1,
            "lr_schedule": "cosine_epoch",
            "batch_size": 32,
        },
    },
}


class CrossValidationConfig(_Frozen):
    """Out-of-sample pred_probs for cleanlab (app/ml/crossval.py)."""

    folds: int = Field(
        0,
        ge=0,
        le=20,
        description="0: off. k >= 2: after the job's training, k more trainings, each on k-1 folds of the items, give "
        "every item its probabilities over all classes from a model that never saw it (format=pred_probs then "
        "exports those, and label_quality scores Candor's label by them). Cost: about k - 1 times the training "
        "time on top of the job; features are not computed again",
    )

    @field_validator("folds")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise ValueError("folds must be 0 (off) or at least 2")
        return value


class CleanConfig(_Frozen):
    """Everything a cleaning job needs besides its data."""

    preset: PresetName = Field(
        "offline",
        description="training recipe the prompt and train fields start from: 'offline' (Candor's defaults, tuned on "
        "the offline backbone) or 'coop' (CoOp's and the paper's: SGD lr 0.002 momentum 0.9, weight decay 5e-4, one "
        "warm-up epoch at 1e-5, cosine per epoch, 16 context vectors, batch 32; for CLIP checkpoints). Resolved at "
        "validation: fields the config sets itself win, the stored config holds every value",
    )
    backbone: str = Field(
        "offline",
        max_length=4096,
        description=f"{spec_help()} (app/ml/backbones/registry.py; a checkpoint is an absolute path or file:PATH; "
        "docs/backbones.md lists the kinds and the preset to use with each)",
    )
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
    cross_validation: CrossValidationConfig = CrossValidationConfig()
    votes: VotesConfig = VotesConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """Fill the fields the preset names and the config leaves out (explicit fields win)."""
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "offline")
        if not isinstance(preset, str) or preset not in PRESETS:
            return data  # the field's own validation names the allowed values
        data = dict(data)
        for section, values in PRESETS[preset].items():
            given = data.get(section)
            if isinstance(given, BaseModel):
                given = given.model_dump()
            if given is None or isinstance(given, dict):
                data[section] = {**values, **(given or {})}
        return data

    @field_validator("backbone")
    @classmethod
    def _check_backbone(cls, value: str) -> str:
        check_text(value, "backbone")
        parse_spec(value)  # the registry's grammar; the kind's own checks run where the service has its settings
        return value

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, t in enumerate(value):
            check_template(t, i)
        return value

    def digest(self) -> str:
        """A stable hash of the config, used in the classifier's version. Sections added later are left
        out while they hold their defaults (cross-validation off, the votes' defaults), so configs
        written before they existed keep their hash."""
        off = set()
        if self.cross_validation.folds == 0:
            off.add("cross_validation")
        if self.votes == VotesConfig():
            off.add("votes")
        blob = json.dumps(self.model_dump(mode="json", exclude=off), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(self, **sections: dict) -> CleanConfig:
        """Return a copy with nested sections updated from plain dicts (CLI flags, API fields).

        A ``preset`` among them is applied first, over this config's values; the other sections
        then override the preset."""
        data = self.model_dump(mode="json")
        if sections.get("preset") in PRESETS:
            data = _deep_merge(data, PRESETS[sections["preset"]])
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
