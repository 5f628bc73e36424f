"""Flows as data: what a step is, and what it may answer the step engine.

A ``StepSpec`` is one external effect of a flow, declared with three functions:

- ``prepare(operation, observation) -> Write | Cancel | Attention`` — pure: from the operation and what
  was just read (a fresh portfolio, or nothing), the write to make, with the intent the journal records
  first and the columns it sets; or why the operation must stop now;
- ``call(ports, operation, write) -> Done | Cancel | Attention | Divert`` — the effect, through the ports
  (``batch.domain.ports``); raises the job's transient errors, answers permanent refusals as values
  (``Divert``: refused for good after money moved, the flow's compensation follows);
- ``read_back(ports, operation) -> Done | NotDone | Attention`` — after an earlier attempt whose outcome
  is unknown: was it applied (adopt it), is it safe to apply again (with what was read), or neither?

plus ``observe(ports, operation)``, the fresh read ``prepare`` needs (None when it needs none). No step
knows the journal; the engine (``batch.service.engine.steps``) knows no payload: it records intents and
outcomes, moves states, retries, reads back and stops — the same loop for every flow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batch.domain.payout import FlowKind, Step
from batch.domain.ports import Ports
from batch.domain.records import PayoutRecord


@dataclass(frozen=True)
class Write:
    """What a step will send: ``payload`` for its call, ``intent`` recorded before it, ``updates`` set with it."""

    payload: Any
    intent: Mapping[str, Any] = field(default_factory=dict)
    updates: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """The effect happened (now, or found by a read-back): the outcome's detail, columns to set, a report note."""

    detail: Mapping[str, Any] = field(default_factory=dict)
    updates: Mapping[str, Any] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True)
class NotDone:
    """A read-back found no trace of the effect: applying it again is safe. ``observation`` is what was read."""

    observation: Any = None


@dataclass(frozen=True)
class Cancel:
    """Stop before any money moved: the operation is CANCELLED and its decision revised."""

    decision: str
    reason: str
    what: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attention:
    """Stop for a person: the error and the evidence are recorded; money that moved stays moved."""

    error: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Divert:
    """Refused for good after money moved: the flow's compensation takes over (``payout.FLOW_BRANCHES``).

    The decision is revised to ``decision``/``reason`` (the true reason) at once, the operation enters the
    branch state and the engine drives the compensating step next.
    """

    decision: str
    reason: str
    what: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


Prepared = Write | Cancel | Attention
Called = Done | Cancel | Attention | Divert
ReadBack = Done | NotDone | Attention


@dataclass(frozen=True)
class StepSpec:
    """One step of a flow (see the module docstring)."""

    step: Step
    prepare: Callable[[PayoutRecord, Any], Prepared]
    call: Callable[[Ports, PayoutRecord, Write], Called]
    read_back: Callable[[Ports, PayoutRecord], ReadBack] | None = None
    observe: Callable[[Ports, PayoutRecord], Any] | None = None


@dataclass(frozen=True)
class Flow:
    """A flow's steps, in order; the states they move through are ``batch.domain.payout.FLOW_STATES``."""

    kind: FlowKind
    steps: tuple[StepSpec, ...]

    def spec(self, step: Step) -> StepSpec:
        for spec in self.steps:
            if spec.step is step:
                return spec
        raise KeyError(f"{self.kind} has no step {step}")
