"""The classifier artifact: safetensors for tensors, JSON for everything else. Never pickle.

It holds the backbone spec and exact id, the class names, the learned context, the learned class
text features (so prediction is one image forward and a matmul, no text tower), the handcrafted
class features (zero-shot baseline), the config and the metrics. On disk it is a folder with
``classifier.safetensors`` and ``classifier.json``; as one blob (for a database) it is a safetensors
file whose metadata carries the JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save_file
from safetensors.torch import save as st_save

from app.ml.backbones import Backbone
from app.ml.objectives import log_mix, restrict_logits

FORMAT = "candor.classifier/1"
TENSOR_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
_TENSORS = ("ctx", "class_features", "prior_features")


class ArtifactError(ValueError):
    pass


@dataclass
class Classifier:
    backbone: str
    backbone_id: str
    classes: list[str]
    ctx: torch.Tensor
    class_features: torch.Tensor
    prior_features: torch.Tensor
    logit_scale: float
    view: str = "plain"
    prior_weight: float = 0.0  # weight of the handcrafted prior in the posterior (chosen label-free)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        h = hashlib.sha256()
        h.update(self.backbone_id.encode())
        h.update(json.dumps(self.config, sort_keys=True).encode())
        h.update(json.dumps(self.classes).encode())
        h.update(repr(float(self.prior_weight)).encode())
        h.update(self.ctx.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # ---- prediction -------------------------------------------------------------------------
    def probabilities(self, features: torch.Tensor, candidates: Sequence[str] | None = None) -> torch.Tensor:
        """(B, K) posterior from (B, D) image features; zero outside ``candidates`` when given.

        Computed in log space (the prior mixed in with logaddexp, the restriction a softmax over the
        candidates with every other class at -inf), so a restricted row sums to one for any logit
        gap. An empty ``candidates`` (None or []) means no restriction.
        """
        feats = features.float()
        log_probs = F.log_softmax(self.logit_scale * feats @ self.class_features.T.to(feats.device), dim=1)
        if self.prior_weight > 0:
            log_prior = F.log_softmax(self.logit_scale * feats @ self.prior_features.T.to(feats.device), dim=1)
            log_probs = log_mix(log_probs, log_prior, self.prior_weight)
        if not candidates:
            return log_probs.exp()
        index = {c: k for k, c in enumerate(self.classes)}
        unknown = [c for c in candidates if c not in index]
        if unknown:
            raise ArtifactError(f"candidate {unknown[0]!r} is not among the classifier's classes")
        keep = torch.zeros(len(self.classes), device=log_probs.device)
        keep[[index[c] for c in candidates]] = 1.0
        return restrict_logits(log_probs, keep.expand_as(log_probs))

    def check_backbone(self, backbone: Backbone) -> None:
        if backbone.id != self.backbone_id:
            raise ArtifactError(
                f"classifier was trained on backbone {self.backbone_id!r}, but {backbone.id!r} was loaded"
            )

    def predict(
        self,
        backbone: Backbone,
        images: Sequence[Image.Image],
        top_k: int = 5,
        candidates: Sequence[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        self.check_backbone(backbone)
        candidates = list(dict.fromkeys(candidates)) if candidates else None
        probs = self.probabilities(backbone.encode_images(images, view=self.view), candidates)
        k = min(top_k, len(candidates) if candidates else len(self.classes))
        top = probs.topk(k, dim=1)
        return [
            [(self.classes[int(j)], round(float(p), 6)) for p, j in zip(vals, idxs, strict=True)]
            for vals, idxs in zip(top.values, top.indices, strict=True)
        ]

    # ---- persistence ------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "backbone": self.backbone,
            "backbone_id": self.backbone_id,
            "classes": self.classes,
            "logit_scale": self.logit_scale,
            "view": self.view,
            "prior_weight": self.prior_weight,
            "config": self.config,
            "metrics": self.metrics,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().float().contiguous() for name in _TENSORS}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self._tensors(), folder / TENSOR_FILE, metadata={"format": FORMAT})
        (folder / META_FILE).write_text(json.dumps(self._meta(), indent=2, sort_keys=True) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Classifier:
        folder = Path(folder)
        if not (folder / TENSOR_FILE).is_file() or not (folder / META_FILE).is_file():
            raise ArtifactError(f"{str(folder)!r} is not a classifier folder ({TENSOR_FILE} + {META_FILE})")
        return cls._build(load_file(folder / TENSOR_FILE), json.loads((folder / META_FILE).read_text()))

    def to_bytes(self) -> bytes:
        return st_save(self._tensors(), metadata={"format": FORMAT, "meta": json.dumps(self._meta(), sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Classifier:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("meta", "{}"))
        return cls._build(st_load(data), meta)

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Classifier:
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"unknown artifact format {meta.get('format')!r}, expected {FORMAT!r}")
        missing = [t for t in _TENSORS if t not in tensors]
        if missing:
            raise ArtifactError(f"artifact lacks tensor {missing[0]!r}")
        clf = cls(
            backbone=meta["backbone"],
            backbone_id=meta["backbone_id"],
            classes=list(meta["classes"]),
            logit_scale=float(meta["logit_scale"]),
            view=meta.get("view", "plain"),
            prior_weight=float(meta.get("prior_weight", 0.0)),
            config=meta.get("config", {}),
            metrics=meta.get("metrics", {}),
            **{t: tensors[t] for t in _TENSORS},
        )
        if meta.get("version") and meta["version"] != clf.version:
            raise ArtifactError("artifact is corrupt: its content does not match its recorded version")
        return clf
