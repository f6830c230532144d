"""PyTriton's ``pytriton.model_config``: ``ModelConfig``, ``Tensor``, ``DynamicBatcher`` and
``QueuePolicy`` with PyTriton's fields, turned into a Tritium model config by ``Triton.bind``."""

from __future__ import annotations

import dataclasses
import enum
from typing import Dict, Optional, Sequence, Type, Union

import numpy as np

from .exceptions import PyTritonBadParameterError


class TimeoutAction(enum.Enum):
    """What the queue does with a request that waited past its timeout."""

    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclasses.dataclass
class QueuePolicy:
    """The dynamic batcher's queue policy (Triton's ``ModelQueuePolicy``)."""

    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_microseconds: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0


@dataclasses.dataclass
class DynamicBatcher:
    """Triton's dynamic batcher, as PyTriton describes it."""

    max_queue_delay_microseconds: int = 0
    preferred_batch_size: Optional[list] = None
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: Optional[QueuePolicy] = None
    priority_queue_policy: Optional[Dict[int, QueuePolicy]] = None


@dataclasses.dataclass
class ModelConfig:
    """A bound model's config: batching, the batcher, response cache and decoupled responses."""

    batching: bool = True
    max_batch_size: int = 4
    batcher: DynamicBatcher = dataclasses.field(default_factory=DynamicBatcher)
    response_cache: bool = False
    decoupled: bool = False


@dataclasses.dataclass(frozen=True)
class Tensor:
    """An input or output: shape without the batch axis (-1: any size), dtype, and a name
    (``INPUT_n`` / ``OUTPUT_n`` by position when none is given, as in PyTriton)."""

    shape: tuple
    dtype: Union[np.dtype, Type[np.dtype], Type[object]] = np.float32
    name: Optional[str] = None
    optional: Optional[bool] = False

    def __post_init__(self):
        dtype = self.dtype
        if not (dtype is object or dtype is bytes or isinstance(dtype, (np.dtype, type, str))):
            raise PyTritonBadParameterError(f"tensor {self.name or ''}: {dtype!r} is not a dtype")
        try:
            shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise PyTritonBadParameterError(f"tensor {self.name or ''}: shape {self.shape!r} is not a tuple of sizes") from None
        object.__setattr__(self, "shape", shape)


def _queue_policy_text(policy: QueuePolicy) -> str:
    return (
        f"timeout_action: {TimeoutAction(policy.timeout_action).value} "
        f"default_timeout_microseconds: {int(policy.default_timeout_microseconds)} "
        f"allow_timeout_override: {'true' if policy.allow_timeout_override else 'false'} "
        f"max_queue_size: {int(policy.max_queue_size)}"
    )


def batcher_text(batcher: DynamicBatcher) -> str:
    """The ``dynamic_batching { ... }`` block of a config.pbtxt for ``batcher``."""
    parts = [f"max_queue_delay_microseconds: {int(batcher.max_queue_delay_microseconds)}"]
    parts += [f"preferred_batch_size: {int(size)}" for size in batcher.preferred_batch_size or []]
    if batcher.preserve_ordering:
        parts.append("preserve_ordering: true")
    if batcher.priority_levels:
        parts.append(f"priority_levels: {int(batcher.priority_levels)}")
        parts.append(f"default_priority_level: {int(batcher.default_priority_level)}")
    if batcher.default_queue_policy is not None:
        parts.append(f"default_queue_policy {{ {_queue_policy_text(batcher.default_queue_policy)} }}")
    for level, policy in (batcher.priority_queue_policy or {}).items():
        parts.append(f"priority_queue_policy {{ key: {int(level)} value {{ {_queue_policy_text(policy)} }} }}")
    return "dynamic_batching { " + " ".join(parts) + " }"


def named(tensors: Sequence[Tensor], prefix: str) -> list:
    """The tensors with PyTriton's default names (``INPUT_1``...) where they have none."""
    return [t if t.name else dataclasses.replace(t, name=f"{prefix}_{i}") for i, t in enumerate(tensors, start=1)]


__all__ = ["ModelConfig", "Tensor", "DynamicBatcher", "QueuePolicy", "TimeoutAction"]
