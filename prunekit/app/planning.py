"""The Sensitivity page's budget plan: solved from the scan on screen, measured by the evaluation workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from prunekit.app import links
from prunekit.app.server_state import model_key, register, service
from prunekit.app.session_state import session_id
from prunekit.core.budget import Costs, Plan, Target, plan
from prunekit.core.lab import Lab
from prunekit.core.result import PruneResult
from prunekit.core.sensitivity import SensitivityRow
from prunekit.core.spec import PruneSpec, Structure
from prunekit.errors import InvalidArgumentError
from prunekit.service import readings
from prunekit.service.fanout import plan_job
from prunekit.service.jobs import EvalJob
from prunekit.service.queue import LIVE_FULL


@dataclass(frozen=True)
class PlanView:
    """A plan, what its pruned tensors leave, and its accuracy as measured (or on its way)."""

    plan: Plan
    result: PruneResult
    dense: readings.Reading
    measured: readings.Reading

    @property
    def pending(self) -> bool:
        return self.dense.pending or self.measured.pending

    @property
    def macs_ratio(self) -> float:
        return self.result.macs_ratio

    @property
    def params_ratio(self) -> float:
        return self.result.params_ratio

    def share_query(self, criterion: str, model: str) -> str:
        """The Prune page's query string that opens this plan: each layer at its sparsity, the slider at 0."""
        settings = {
            "model": model,
            "criterion": criterion,
            "structure": Structure.UNSTRUCTURED.value,
            "sparsity": "0.0",
            "overrides": links.encode_overrides(self.plan.sparsities),
        }
        return urlencode(settings)

    def ratio_dict_json(self) -> str:
        """Torch-Pruning's ``pruning_ratio_dict``, keyed by dotted module names."""
        return json.dumps({name: s for name, s in self.plan.sparsities.items() if s > 0}, indent=1)


def plan_view(current: Lab, criterion: str, rows: list[SensitivityRow], target: Target) -> PlanView:
    """Solve ``target`` on the scan's ``rows``; measure the plan (full split) as this session's plan request.
    Raises InvalidArgumentError when the scan's grid cannot meet the target."""
    chosen = plan(Costs.of(current.profile, current.loaded.model), rows, target)
    template = EvalJob(model_key(current), PruneSpec(criterion))
    job, dense = plan_job(template, chosen.sparsities), EvalJob(model_key(current))
    result = current.result(job.spec, paths=False)
    svc = service()
    register(svc, current)
    known = svc.request([(dense, LIVE_FULL), (job, LIVE_FULL)], f"{session_id()}/plan")
    return PlanView(chosen, result, readings.reading(known[dense]), readings.reading(known[job.canonical()]))


def pending(current: Lab, criterion: str, rows: list[SensitivityRow], target: Target) -> bool:
    """Whether the plan for ``target`` is still being measured (False when the grid cannot meet it)."""
    try:
        return plan_view(current, criterion, rows, target).pending
    except InvalidArgumentError:
        return False
