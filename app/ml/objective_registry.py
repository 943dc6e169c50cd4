"""The partial-label objectives as data: one registry that everything else derives from.

``OBJECTIVE_SPECS`` is the only list of objective names. The config's ``objective.name`` literal
and ``OBJECTIVES``, the CLI's ``--objective`` choices and help (:func:`objective_help`), the
objectives table in docs/engine.md (:func:`objectives_table`, kept equal by a test) and the
implementations in app/ml/objectives.py (one class per spec, checked at import) all read it.
Each objective's own hyper-parameters live in a section of :class:`ObjectiveConfig` named after
it (``objective.pop.warmup``, ``objective.lws.beta``).

The references each entry follows, file and line, are in docs/method.md ("Objectives"). This
module imports neither PyTorch nor the rest of the engine, so the config and the API can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

UpdateTime = Literal["none", "before_step", "after_step"]


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective: its name, what it computes, and when it updates its confidences."""

    name: str
    method: str  # paper, for people
    loss: str  # the loss, one line of notation (p = softmax(z), s mask, w confidences)
    confidences: str  # initialisation and update of w
    update: UpdateTime  # "none": no confidences; otherwise from the outputs before or after the optimizer step
    section: str | None  # the ObjectiveConfig field holding its own hyper-parameters, if any
    summary: str  # one line for the CLI's help


OBJECTIVE_SPECS: tuple[ObjectiveSpec, ...] = (
    ObjectiveSpec(
        name="naive",
        method="NAIVE (CoOpPLL's baseline)",
        loss='−Σ_k (s_k/|S|) log p_k, or CC with `naive.variant = "cc"`',
        confidences="none",
        update="none",
        section="naive",
        summary="uniform weights over the candidates",
    ),
    ObjectiveSpec(
        name="cc",
        method="CC (Feng et al., NeurIPS 2020)",
        loss="−log Σ_k s_k p_k",
        confidences="none",
        update="none",
        section=None,
        summary="minus the log of the candidates' total probability",
    ),
    ObjectiveSpec(
        name="rc",
        method="RC (Feng et al., NeurIPS 2020)",
        loss="−Σ_k w_k log p_k",
        confidences="init s/|S|; after each optimizer step the batch is run again and w ← s⊙p / Σ s⊙p",
        update="after_step",
        section=None,
        summary="confidence-weighted cross-entropy, confidences from the outputs after each step",
    ),
    ObjectiveSpec(
        name="proden",
        method="PRODEN (Lv et al., ICML 2020)",
        loss="−Σ_k w_k log p_k",
        confidences="init s/|S|; w ← s⊙p / Σ s⊙p from the step's own outputs (before the optimizer step)",
        update="before_step",
        section=None,
        summary="confidence-weighted cross-entropy, confidences from the step's own outputs (default)",
    ),
    ObjectiveSpec(
        name="lws",
        method="LWS (Wen et al., ICML 2021)",
        loss="Σ_k w_k s_k ψ(z_k) + β Σ_k w_k (1−s_k) ψ(−z_k), ψ(u) = 1/(1+e^u), β = `lws.beta` (1)",
        confidences="init 1/K over all classes; after each step, run again: w ← norm(s⊙p) + norm((1−s)⊙p)",
        update="after_step",
        section="lws",
        summary="leveraged weighted loss with the paper's sigmoid (saturates at CLIP's logit scale)",
    ),
    ObjectiveSpec(
        name="lwc",
        method="LWC (Wen et al., ICML 2021, cross-entropy form)",
        loss="Σ_k w_k s_k (−log p_k) + β Σ_k w_k (1−s_k) (−log(1−p_k)), β = `lwc.beta` (1)",
        confidences="as LWS",
        update="after_step",
        section="lwc",
        summary="leveraged weighted loss, cross-entropy form (what CoOpPLL runs as LWS)",
    ),
    ObjectiveSpec(
        name="cavl",
        method="CAVL (Zhang et al., ICLR 2022)",
        loss="−Σ_k w_k log p_k",
        confidences="init s/|S|; after each step, run again: w ← onehot(argmax_{k∈S} z_k·|1−z_k|) on the logits",
        update="after_step",
        section=None,
        summary="one-hot target from the class activation value, chosen among the candidates",
    ),
    ObjectiveSpec(
        name="pop",
        method="POP (Xu et al., ICML 2023)",
        loss="−Σ_k w_k log p_k",
        confidences="PRODEN's update; at the end of epoch `pop.warmup` + 1 and every `pop.interval` epochs after "
        "it, drop candidates whose mean confidence over the last `pop.window` epochs is below θ × the "
        "item's best, w ← norm(mean ⊙ purified s); θ ← θ(1 + growth) while θ < `pop.theta_max` (0.4) and "
        "fewer than 0.01% of entries changed",
        update="before_step",
        section="pop",
        summary="PRODEN plus progressive purification of the candidate sets",
    ),
)

SPECS_BY_NAME: dict[str, ObjectiveSpec] = {spec.name: spec for spec in OBJECTIVE_SPECS}
OBJECTIVES: tuple[str, ...] = tuple(SPECS_BY_NAME)
ObjectiveName = Literal[OBJECTIVES]  # type: ignore[valid-type]
DEFAULT_OBJECTIVE = "proden"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class NaiveParams(_Section):
    variant: Literal["uniform", "cc"] = Field(
        "uniform", description="NAIVE as -sum (s/|S|) log p ('uniform') or as CC ('cc')"
    )


class LwParams(_Section):
    beta: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="beta: weight of the non-candidate term (lw_weight in the references; 1 as in the paper's code)",
    )


class PopParams(_Section):
    warmup: int = Field(
        10,
        ge=0,
        description="epochs before the first purification, which runs at the end of epoch warmup + 1 "
        "(palm-ml/POP: 20 of 500; 10 purifies twice within the default 20 epochs)",
    )
    interval: int = Field(5, ge=1, le=1000, description="epochs between purifications (palm-ml/POP: 5)")
    window: int = Field(5, ge=1, description="epochs of confidences averaged for purification")
    theta: float = Field(1e-3, gt=0.0, description="initial purification threshold")
    theta_growth: float = Field(1e-3, ge=0.0, description="theta <- theta (1 + growth) when purification settles")
    theta_max: float = Field(0.4, gt=0.0, description="theta grows only while below this (palm-ml/POP: 0.4)")


# The flat fields of configs stored before the per-objective sections, and where they went.
_LEGACY_FIELDS: dict[str, tuple[str, str]] = {
    "naive_variant": ("naive", "variant"),
    "pop_warmup": ("pop", "warmup"),
    "pop_window": ("pop", "window"),
    "pop_theta": ("pop", "theta"),
    "pop_theta_growth": ("pop", "theta_growth"),
    "pop_theta_max": ("pop", "theta_max"),
}
_LEGACY_LWS = ("lws_weight", "lws_loss")
LEGACY_LWS_WEIGHT = 2.0  # lws_weight's default in the flat schema


class ObjectiveConfig(_Section):
    """The partial-label objective and one section of hyper-parameters per objective that has any.

    Configs written with the earlier flat fields (``naive_variant``, ``lws_weight``, ``lws_loss``,
    ``pop_*``) keep validating and keep their meaning: the fields move into their sections, and
    ``name = "lws"`` with ``lws_loss = "log"`` (that schema's default) becomes ``lwc``, the
    cross-entropy form it always computed, with ``lws_weight`` (default 2) as its beta.
    """

    name: ObjectiveName = Field(DEFAULT_OBJECTIVE, description="partial-label objective: " + ", ".join(OBJECTIVES))
    naive: NaiveParams = NaiveParams()
    lws: LwParams = LwParams()
    lwc: LwParams = LwParams()
    pop: PopParams = PopParams()

    @model_validator(mode="before")
    @classmethod
    def _from_flat_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in data for k in (*_LEGACY_FIELDS, *_LEGACY_LWS)):
            return data
        data = dict(data)

        def put(section: str, key: str, value: Any) -> None:
            current = data.get(section)
            current = current.model_dump() if isinstance(current, BaseModel) else current
            if current is None:
                current = {}
            if not isinstance(current, dict):
                raise ValueError(f"objective.{section} must be an object")
            data[section] = {**current, key: value}

        for old, (section, key) in _LEGACY_FIELDS.items():
            if old in data:
                put(section, key, data.pop(old))
        if any(k in data for k in _LEGACY_LWS):
            loss = data.pop("lws_loss", "log")
            if loss not in ("log", "sigmoid"):
                raise ValueError("objective.lws_loss must be 'log' or 'sigmoid'")
            beta = data.pop("lws_weight", LEGACY_LWS_WEIGHT)
            put("lws", "beta", beta)
            put("lwc", "beta", beta)
            if data.get("name") == "lws" and loss == "log":
                data["name"] = "lwc"
        return data


def objective_help() -> str:
    """The CLI's help for ``--objective``."""
    parts = [f"{s.name}: {s.summary}" for s in OBJECTIVE_SPECS]
    return "partial-label objective (default " + DEFAULT_OBJECTIVE + "); " + "; ".join(parts)


def objectives_table() -> str:
    """The Markdown table of the objectives in docs/engine.md."""
    when = {"none": "—", "before_step": "before the step", "after_step": "after the step"}
    rows = [
        "| name | method | loss | confidences | update from the outputs |",
        "|---|---|---|---|---|",
    ]
    for s in OBJECTIVE_SPECS:
        loss = s.loss.replace("|", "\\|")
        conf = s.confidences.replace("|", "\\|")
        rows.append(f"| `{s.name}` | {s.method} | {loss} | {conf} | {when[s.update]} |")
    return "\n".join(rows) + "\n"
