"""The engine's public entry point: candidate-labelled images in, cleaned labels and a classifier out.

The CLI, the worker, the API and the benchmarks all call :func:`clean` (or its two halves,
:func:`app.ml.features.featurize` and :func:`app.ml.trainer.train`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.ml.artifacts import Classifier
from app.ml.backbones import Backbone, load_backbone
from app.ml.config import CleanConfig
from app.ml.crowd import Votes
from app.ml.data import CandidateDataset
from app.ml.features import FeatureStore, MemoryFeatureStore, featurize
from app.ml.results import ItemResult, choice_within, item_results
from app.ml.trainer import Hooks, TrainResult, train


@dataclass
class CleanOutput:
    items: list[ItemResult]
    classifier: Classifier
    metrics: dict
    train: TrainResult


def _log(log_p: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    """The exact log-posterior where training kept it, else the log of the probabilities."""
    return log_p if log_p is not None else p.double().log()


def job_metrics(result: TrainResult, mask: torch.Tensor) -> dict:
    """Label-free summaries of a finished job (no true labels needed)."""
    m = mask.double()
    k = m.shape[1]
    size = m.sum(dim=1)
    prior_top = result.prior_posterior.argmax(dim=1)
    learned_choice = choice_within(_log(result.log_posterior, result.posterior), m)
    prior_choice = choice_within(_log(result.log_prior_posterior, result.prior_posterior), m)
    return {
        "items": int(m.shape[0]),
        "classes": int(k),
        "mean_candidates": round(float(size.mean()), 4),
        "prior_top1_in_candidates": round(float(m[torch.arange(m.shape[0]), prior_top].mean()), 4),
        "chance_in_candidates": round(float((size / k).mean()), 4),
        "prior_candidate_mass": round(float((result.prior_posterior.double() * m).sum(dim=1).mean()), 4),
        "agreement_with_prior": round(float((learned_choice == prior_choice).double().mean()), 4),
        "candidate_mass": round(float((result.posterior.double() * m).sum(dim=1).mean()), 4),
        "selection": result.selection,
        "history": result.history,
    }


def outputs(
    backbone: Backbone, ids: list[str], classes: list[str], mask: torch.Tensor, cfg: CleanConfig, result: TrainResult
) -> CleanOutput:
    """Per-item results, job metrics and the classifier artifact of a finished training run.

    With annotators' votes the labels come from the vote posterior (model and annotators
    together), within the sets it widened; otherwise from the learned prompt within the sets."""
    log_post = _log(result.log_posterior, result.posterior)
    if result.votes is not None:
        log_post = result.votes.posterior.clamp_min(1e-300).log()
        mask = result.label_mask
    items = item_results(
        ids,
        classes,
        log_post,
        mask,
        cfg.output,
        _log(result.log_prior_posterior, result.prior_posterior),
    )
    metrics = job_metrics(result, mask)
    if result.votes is not None:
        metrics["votes"] = result.votes.summary()
    classifier = Classifier(
        backbone=backbone.spec,
        backbone_id=backbone.id,
        classes=list(classes),
        ctx=result.ctx,
        class_features=result.class_features,
        prior_features=result.prior_features,
        logit_scale=result.logit_scale,
        view=cfg.features.view,
        prior_weight=result.prior_weight,
        config=cfg.model_dump(mode="json"),
        metrics={k: v for k, v in metrics.items() if k != "history"} | {"final_epoch": result.history[-1]},
    )
    return CleanOutput(items=items, classifier=classifier, metrics=metrics, train=result)


def annotator_report(out: CleanOutput, classes: list[str]) -> list[dict]:
    """Per annotator (by name): items, estimated accuracy and confusion; [] without votes."""
    if out.train.votes is None:
        return []
    return sorted((a.to_dict(list(classes)) for a in out.train.votes.annotators), key=lambda a: a["annotator"])


def clean(
    dataset: CandidateDataset,
    cfg: CleanConfig | None = None,
    backbone: Backbone | None = None,
    store: FeatureStore | None = None,
    hooks: Hooks | None = None,
    progress: bool = False,
) -> CleanOutput:
    cfg = cfg or CleanConfig()
    backbone = backbone or load_backbone(cfg.backbone)
    store = store if store is not None else MemoryFeatureStore()
    features = featurize(
        backbone, dataset.images, store, view=cfg.features.view, batch_size=cfg.features.batch_size, progress=progress
    )
    mask = dataset.mask()
    votes = None
    if dataset.annotations is not None:
        votes = Votes.from_annotations(dataset.annotations, {c: k for k, c in enumerate(dataset.classes)})
    result = train(backbone, dataset.classes, features, mask, cfg, hooks=hooks, progress=progress, votes=votes)
    return outputs(backbone, dataset.ids, dataset.classes, mask, cfg, result)
