"""Process-wide warm caches: backbones loaded once (LRU by spec), classifier artifacts by id."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from app.core.settings import get_settings

V = TypeVar("V")


class LRU(Generic[V]):
    def __init__(self, capacity: Callable[[], int]):
        self._capacity = capacity
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one loader per key; others wait for it
            with self._lock:
                if key in self._data:
                    return self._data[key]
            value = load()
            with self._lock:
                self._data[key] = value
                while len(self._data) > max(1, self._capacity()):
                    self._data.popitem(last=False)
                self._loading.pop(key, None)
            return value

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def _load_backbone(spec: str):
    from app.ml.backbones import load_backbone

    settings = get_settings()
    return load_backbone(spec, device=settings.torch_device(), checkpoint_dirs=settings.checkpoint_dirs)


backbones: LRU = LRU(lambda: get_settings().backbone_cache_size)
classifiers: LRU = LRU(lambda: get_settings().classifier_cache_size)


def get_backbone(spec: str):
    return backbones.get(spec, lambda: _load_backbone(spec))
