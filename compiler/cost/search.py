"""Search: per-layer choices explored by Optuna, each trial judged on the real graph.

The allocators (``allocate.py``) add per-layer predictions and error proxies, a first-order model.
The search instead applies each trial's choices to a copy of the model (the ``evaluate`` callback
the budget pass gives it) and reads the predicted latency of the fused graph and the measured output
error, so interactions between layers (pruning a group and factorizing a layer in it, errors that
compound) count. Two objectives, latency and output error, minimised by multi-objective TPE (Optuna
5's default) or NSGA-II; the budget's limits are Optuna constraints (``trial.set_constraint``). The
answer is the feasible trial with the least error; the allocation's plan is enqueued as the first
trial (with a shared storage, judged by each worker itself and kept if no trial beats it), so the
search never returns a worse plan than the allocator found.

Studies live in memory, or in any Optuna storage URL (``sqlite:///study.db``, PostgreSQL, ...):
worker processes (or machines) that run the same compile with the same storage and study name
share one study, each adding its trials, each ending with the best plan of all of them.
Pure of torch: the budget pass builds the tables and the evaluation.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..budget import from_mapping
from ..errors import BudgetError, choices
from .allocate import Candidate

SAMPLERS = ("tpe", "nsga2")


@dataclass(frozen=True)
class Search:
    """How to search: ``trials`` evaluated here (per worker), the ``sampler``, and where the study
    lives (``storage``: None in memory, else an Optuna storage URL; ``study``: its name, which workers
    sharing a storage must agree on). ``seed`` makes an in-memory search repeatable; with a storage it
    is not used (workers sharing a study must not propose the same trials)."""

    trials: int = 40
    sampler: str = "tpe"
    storage: str | None = None
    study: str = "fxcompress-budget"
    seed: int | None = 0

    def __post_init__(self):
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise BudgetError(f"Search.trials must be an int >= 1, got {self.trials!r}")
        if self.sampler not in SAMPLERS:
            raise BudgetError(f"unknown search sampler '{self.sampler}', valid samplers are {choices(SAMPLERS)}")
        if self.storage is not None and (not isinstance(self.storage, str) or "://" not in self.storage):
            raise BudgetError(f"Search.storage must be an Optuna storage URL such as 'sqlite:///study.db' or "
                              f"'postgresql://user@host/db', got {self.storage!r}")
        if not isinstance(self.study, str) or not self.study:
            raise BudgetError(f"Search.study must be a non-empty name, got {self.study!r}")

    @classmethod
    def from_dict(cls, d: dict | Search) -> Search:
        return from_mapping(cls, d, "search")


@dataclass
class SearchResult:
    picks: dict[str, Candidate]
    totals: dict[str, float]  # ms, params, macs, error of the chosen trial, as evaluated
    trials: int  # trials in the study, all workers
    pareto: list[dict]  # the feasible latency / error front: [{"ms": ..., "error": ...}]


def search(tables: dict[str, list[Candidate]], evaluate: Callable[[dict[str, Candidate]], dict[str, float]],
           limits: dict[str, float], spec: Search, *, initial: dict[str, Candidate] | None = None,
           progress: bool = False) -> SearchResult:
    """Search one candidate per table entry; ``evaluate(picks)`` returns the plan's ms, params, macs
    and error. BudgetError when no trial meets ``limits``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keys = sorted(tables)
    seed = spec.seed if spec.storage is None else None
    sampler = (optuna.samplers.TPESampler(seed=seed) if spec.sampler == "tpe"
               else optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.trials // 2))))
    for attempt in range(5):
        try:
            study = optuna.create_study(storage=spec.storage, study_name=spec.study, load_if_exists=True,
                                        directions=["minimize", "minimize"], sampler=sampler)
            break
        except Exception as e:  # noqa: BLE001 - a bad URL or an unreachable database: say which
            # Workers starting together on a new SQLite file race to create its schema; the loser's
            # insert of the schema version fails. It exists by the time it tries again.
            if attempt == 4:
                raise BudgetError(f"search: cannot open Optuna storage {spec.storage!r} (study '{spec.study}'): "
                                  f"{e}") from e
            time.sleep(0.2 * (attempt + 1))
    local = None  # the allocation's plan, judged here, when it cannot be the study's first trial
    if initial is not None:
        if spec.storage is None:
            study.enqueue_trial({k: tables[k].index(initial[k]) for k in keys})
        else:
            # Workers sharing a study would all run an enqueued trial, and all but one fail to record
            # it (Optuna "Cannot tell a COMPLETE trial" on SQLite): each judges it locally instead.
            got = evaluate(initial)
            if all(got[r] <= v * (1 + 1e-9) for r, v in limits.items()):
                local = (dict(initial), got)

    def objective(trial) -> tuple[float, float]:
        picks = {k: tables[k][trial.suggest_categorical(k, list(range(len(tables[k]))))] for k in keys}
        got = evaluate(picks)
        for r, limit in limits.items():
            trial.set_constraint(r, got[r] / limit - 1.0)
        trial.set_user_attr("totals", got)
        return got["ms"], got["error"]

    study.optimize(objective, n_trials=spec.trials, show_progress_bar=progress)
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if set(t.params) == set(keys)]
    feasible = [t for t in done if all(v <= 1e-9 for v in t.constraints.values())]
    if local is not None and (not feasible or local[1]["error"] < min(t.user_attrs["totals"]["error"] for t in feasible)):
        return SearchResult(local[0], local[1], len(done), [{"ms": local[1]["ms"], "error": local[1]["error"]}])
    if not feasible:
        best = min(done, key=lambda t: max(t.constraints.values(), default=math.inf))
        got = best.user_attrs["totals"]
        closest = ", ".join(f"{r} {got[r]:.4g} (limit {v:.4g})" for r, v in limits.items())
        raise BudgetError(f"budget search: none of {len(done)} trials meets the budget; the closest achievable found "
                          f"is {closest}")
    best = min(feasible, key=lambda t: (t.user_attrs["totals"]["error"], t.user_attrs["totals"]["ms"]))
    front = sorted(((t.user_attrs["totals"]["ms"], t.user_attrs["totals"]["error"]) for t in feasible))
    pareto, lowest = [], math.inf
    for ms, err in front:
        if err < lowest:
            pareto.append({"ms": ms, "error": err})
            lowest = err
    return SearchResult({k: tables[k][best.params[k]] for k in keys}, dict(best.user_attrs["totals"]), len(done), pareto)
