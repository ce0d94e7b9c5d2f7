"""The bridge: a Ray Tune Searcher + TrialScheduler pair over one Optuna study.

    Searcher.suggest          = study.ask() + the define-by-run space
    Scheduler.on_trial_result = report(value, epoch), then should_prune() -> STOP (told PRUNED)
    Searcher.on_trial_complete = tell COMPLETE (best value over its epochs) or FAIL

Ray's own OptunaSearch cannot do this: it hard-codes NopPruner and tells stopped trials as
complete. Here a pruned trial is told PRUNED at the moment it is pruned and never told again.

A trial whose own code raises reports the error's line first (`TRIAL_ERROR`): the scheduler
records it on the trial and takes the trial off Ray's retries, which are for lost workers, so it
fails once and is told FAIL.

All state lives in the study (each Optuna trial carries its Ray trial id), so both halves survive
being pickled into Ray's experiment state and a driver restart: after `Tuner.restore` they
reconnect to the database and find their trials again. Database calls are retried while the
database restarts, and a re-reported epoch (a retried trial redoing an epoch) overwrites the same
step, so nothing is lost or counted twice. A trial asked after Ray's last snapshot of its state
(just before the driver died) is one Ray never resumes but will ask for again: the driver marks
it orphaned before resuming, and the next suggestion takes it over instead of growing the study.

The budget is the study's too: the searcher asks until the study holds `n_trials` trials, and
runs at most `max_concurrent` at once, counting what Ray runs now, not what Ray's saved state
counted (`JobSearch`). Every database call first checks that this driver still holds its job
(`automl.tune.control`): one that lost it asks, reports and tells nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import optuna
from optuna.trial import TrialState
from ray.tune.experiment import Trial as RayTrial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher, SearchGenerator

from automl.search import keys
from automl.search._optuna import trial_id
from automl.search.freeze_thaw import Curve, FreezeThaw
from automl.search.keys import state_name
from automl.search.strategy import Strategy
from automl.tune._ray import no_retries
from automl.tune.control import control_of
from automl.tune.stopper import JobStopper
from storage.optuna_storage import optuna_storage, retry
from workers.model.target import COSTS, COSTS_REQUEST, COSTS_RESULT, broken_limits
from workers.tune_adapter import TRIAL_ERROR

log = logging.getLogger(__name__)
T = TypeVar("T")


def cost_key(config: dict[str, Any], request: dict[str, Any]) -> str:
    """What a configuration's costs depend on: backbone, image size and the latency target."""
    target = request.get("target") or {}
    return (f"{config['backbone']}@{config.get('img_size') or 'default'}@"
            + "-".join(f"{k}={v}" for k, v in sorted(target.items())))


def _set_constraints(study: optuna.Study, trial_id: int, constraints: dict[str, float]) -> None:
    trial = optuna.Trial(study, trial_id)
    known = trial.storage.get_trial(trial_id).constraints  # a retried trial records them again
    for name, value in constraints.items():
        if name not in known:
            trial.set_constraint(name, value)


class Events(Protocol):
    """What a live view hears: start, report, pruned, complete, fail (with the trial number;
    a report also with its epoch, which a retried or resumed trial may report again)."""

    def on_event(
        self, kind: str, number: int, value: float | None = None, epoch: int | None = None,
        note: str | None = None,
    ) -> None: ...


# Per-process listeners by study name: never pickled with the bridge, so a restored bridge
# (unpickled by Tuner.restore) finds the listener of the process that restored it.
LISTENERS: dict[str, Events] = {}


@dataclass
class _Known:
    trial_id: int  # Optuna's storage id
    number: int
    finished: bool = False
    trial: optuna.Trial | None = None  # the handle from ask(); rebuilt after a restart
    # the driver's own time on this trial: its ask, and each epoch's report + should_prune
    ask_ms: float | None = None
    report_ms: list[float] = field(default_factory=list)


class StudyLink:
    """The job's study, reconnected lazily; what the searcher and scheduler share.

    Pickling (Ray saves both halves in its experiment state) keeps only the URL, the study name
    and the strategy; the connection and the trial map are rebuilt from the database.
    """

    def __init__(self, storage_url: str, study_name: str, strategy: Strategy) -> None:
        self.storage_url, self.study_name, self.strategy = storage_url, study_name, strategy
        self._storage: optuna.storages.BaseStorage | None = None
        self._study: optuna.Study | None = None
        self._known: dict[str, _Known] = {}
        self._orphans_left = True  # until a suggestion finds none: none are marked after start
        self._costs: dict[str, dict[str, float]] | None = None  # measured, by cost_key
        self.db_seconds = 0.0  # time spent in database calls, for the overhead report
        # freeze-thaw: time in its decisions (the study read for them included), and how many
        self.policy_seconds, self.policy_calls = 0.0, 0
        self.live: set[str] = set()  # the Ray trials running or waiting to, in this run
        self.paused: set[str] = set()  # freeze-thaw: the Ray trials paused, not in `live`
        # freeze-thaw's view of the study, read again only after this driver changed it (Tune
        # asks at every step of its loop while a slot is free and a trial is paused)
        self._trials_seen: list[optuna.trial.FrozenTrial] | None = None
        # each trial's epoch seconds as its results said (freeze-thaw weighs a resume by its
        # cost); kept in memory only: after a driver restart the policy falls back to the others'
        self.seconds: dict[int, dict[int, float]] = {}
        self.added: set[str] = set()  # the Ray trials Tune added in this driver (a retry re-adds)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "storage_url": self.storage_url,
            "study_name": self.study_name,
            "strategy": self.strategy,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage_url"], state["study_name"], state["strategy"])  # type: ignore[misc]

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            self._storage = optuna_storage(self.storage_url)
        return self._storage

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = self.call(
                lambda: self.strategy.load_study(self.storage, self.study_name, reseed=1),
                f"load study {self.study_name}",
            )
        return self._study

    def call(self, fn: Callable[[], T], what: str) -> T:
        """A database call: retried while the database is away, and timed. Each attempt is
        made only while this driver holds the job (else `LeaseLost`, not retried)."""
        job = control_of(self.study_name)

        def held_then_call() -> T:
            job.require_held(self.study_name, what)
            return fn()

        started = time.perf_counter()
        try:
            return retry(held_then_call, what=what)
        finally:
            self.db_seconds += time.perf_counter() - started

    def attach(self, storage: optuna.storages.BaseStorage, study: optuna.Study) -> None:
        """Use the runner's open study instead of opening another connection."""
        self._storage, self._study = storage, study

    def emit(
        self, kind: str, number: int, value: float | None = None, epoch: int | None = None,
        note: str | None = None,
    ) -> None:
        listener = LISTENERS.get(self.study_name)
        if listener is not None:
            listener.on_event(kind, number, value, epoch, note)

    def remember(self, ray_id: str, trial: optuna.Trial) -> _Known:
        known = self._known[ray_id] = _Known(trial_id(trial), trial.number, trial=trial)
        self.changed()
        return known

    def known_costs(self, key: str) -> dict[str, float] | None:
        """Costs measured earlier in this job for a cost key (backbone, image size, target)."""
        if self._costs is None:
            self._costs = dict(self.call(lambda: self.study.user_attrs, "read the study")
                               .get(keys.MEASURED_COSTS, {}))
        return self._costs.get(key)

    def record_costs(self, known: _Known, key: str, costs: dict[str, float]) -> dict[str, list[float]]:
        """Puts a trial's costs on it (the dashboard and the API show them), remembers them for
        the job, and returns the limits they break: {cost: [value, limit]}."""
        broken = broken_limits(costs, self.strategy.limits)
        storage = self.storage
        self.call(lambda: storage.set_trial_user_attr(known.trial_id, keys.COSTS, costs),
                  "record a trial's costs")
        if broken:
            self.call(lambda: storage.set_trial_user_attr(known.trial_id, keys.OVER_LIMIT, broken),
                      "record the limits a trial broke")
        # what TPE learns the feasible region from (a constraint above 0: infeasible)
        over = {name: float(value) - limit for name, limit in self.strategy.limits.items()
                if (value := costs.get(name)) is not None}
        if over:
            self.call(lambda: _set_constraints(self.study, known.trial_id, over),
                      "record a trial's constraints")
        if self.known_costs(key) is None:
            assert self._costs is not None
            self._costs[key] = costs
            measured = dict(self._costs)
            self.call(lambda: self.study.set_user_attr(keys.MEASURED_COSTS, measured),
                      "remember measured costs")
        return broken

    def values_of(self, frozen: optuna.trial.FrozenTrial) -> float | list[float] | None:
        """What a finished trial is told (`Strategy.final_values`)."""
        return self.strategy.final_values(frozen.intermediate_values,
                                          frozen.user_attrs.get(keys.COSTS) or {})

    def trial(self, known: _Known) -> optuna.Trial:
        if known.trial is None:
            known.trial = self.call(lambda: optuna.Trial(self.study, known.trial_id), "reopen a trial")
        return known.trial

    def lookup(self, ray_id: str) -> _Known | None:
        """Find the Optuna trial of a Ray trial; after a restart, from the study's user attrs."""
        known = self._known.get(ray_id)
        if known is not None:
            return known
        for frozen in self._all_trials():
            if frozen.user_attrs.get(keys.RAY_TRIAL_ID) == ray_id:
                known = _Known(trial_id(frozen), frozen.number, frozen.state.is_finished())
                self._known[ray_id] = known
                return known
        return None

    def frozen(self, known: _Known) -> optuna.trial.FrozenTrial:
        return self.call(lambda: self.storage.get_trial(known.trial_id), "read a trial")

    def tell(self, known: _Known, state: TrialState,
             value: float | list[float] | None = None) -> None:
        """Finish a trial once; a retry after the database came back finds it already told."""
        if known.finished:
            return

        def once() -> None:
            if self.frozen(known).state.is_finished():
                return
            if known.ask_ms is not None or known.report_ms:  # while it still takes attributes
                self.storage.set_trial_user_attr(known.trial_id, keys.DRIVER_MS, {
                    "ask": known.ask_ms, "report_and_prune": [round(t, 2) for t in known.report_ms]})
            self.study.tell(known.number, value, state=state, skip_if_finished=True)

        self.call(once, f"tell trial {known.number}")
        known.finished = True
        self.changed()
        self.emit(state_name(state), known.number, value[0] if isinstance(value, list) else value)

    def mark_orphans(self, ray_trial_ids: set[str]) -> list[int]:
        """Mark the RUNNING trials whose Ray trial is not among `ray_trial_ids` (what Ray's saved
        state will resume). Ray does not know it asked for them, so it asks again; `adopt`
        hands them out then. Called by the driver before Tune starts."""
        orphans = [t for t in self._running() if t.user_attrs.get(keys.RAY_TRIAL_ID) not in ray_trial_ids]
        for frozen in orphans:
            self.call(
                partial(self.storage.set_trial_user_attr, trial_id(frozen), keys.ORPHANED, True),
                f"mark trial {frozen.number} orphaned",
            )
        return [t.number for t in orphans]

    def adopt(self) -> optuna.Trial | None:
        """An orphaned trial for the Ray trial being suggested; None when there is none left."""
        if not self._orphans_left:
            return None
        orphan = next((t for t in self._running() if t.user_attrs.get(keys.ORPHANED)), None)
        if orphan is None:
            self._orphans_left = False
            return None
        trial = optuna.Trial(self.study, trial_id(orphan))
        self.call(lambda: trial.set_user_attr(keys.ORPHANED, False), "adopt an orphaned trial")
        return trial

    def asked(self) -> int:
        """The trials that count against the budget: finished (but for those a cancel stopped
        before their first epoch, `keys.UNCOUNTED`), or running and not an orphan (which a
        suggestion takes over rather than adds to the study)."""
        return sum(1 for t in self._all_trials() if (
            t.state.is_finished() and not t.user_attrs.get(keys.UNCOUNTED)) or (
            t.state == TrialState.RUNNING and not t.user_attrs.get(keys.ORPHANED)))

    def uncount(self, trial_id: int, why: str) -> None:
        """A trial a cancel stops before its first epoch: it does not count (`keys.UNCOUNTED`)."""
        self.call(lambda: self.storage.set_trial_user_attr(trial_id, keys.UNCOUNTED, why),
                  "mark a trial uncounted")

    def decide(self, what: Callable[[], T]) -> T:
        """A freeze-thaw decision (should_pause, choose, give_up, evict), timed for the
        overhead report (`automl-bench overhead --freeze-thaw`)."""
        started = time.perf_counter()
        try:
            return what()
        finally:
            self.policy_seconds += time.perf_counter() - started
            self.policy_calls += 1

    def changed(self) -> None:
        """This driver changed the study (asked, reported, told, paused): read it again."""
        self._trials_seen = None

    def _seen(self) -> list[optuna.trial.FrozenTrial]:
        if self._trials_seen is None:
            self._trials_seen = self._all_trials()
        return self._trials_seen

    def curves(self) -> list[Curve]:
        """What freeze-thaw decides from: every started trial of the study, as a `Curve`."""
        out = []
        for t in self._seen():
            if t.state == TrialState.WAITING:
                continue
            state = ("paused" if keys.is_paused(t.user_attrs, t.state)
                     else state_name(t.state))
            out.append(Curve(t.number, dict(t.params), dict(t.intermediate_values),
                             dict(self.seconds.get(t.number, {})), state=state))
        return out

    def ray_ids(self) -> dict[int, str]:
        """The Ray trial id of each Optuna trial number that has one."""
        return {t.number: str(t.user_attrs[keys.RAY_TRIAL_ID]) for t in self._seen()
                if keys.RAY_TRIAL_ID in t.user_attrs}

    def to_resume(self, policy: FreezeThaw, ready: set[str] | None = None) -> str | None:
        """The paused Ray trial the policy resumes at a free slot; None: start a new one.
        `ready`: the paused trials Ray has finished pausing (default: all of them)."""
        ready = self.paused if ready is None else ready & self.paused
        if not ready:
            return None
        curves = self.curves()
        ids = self.ray_ids()
        paused = [c for c in curves if c.state == "paused" and ids.get(c.number) in ready]
        if not paused:
            return None
        number = policy.choose(paused, curves)
        return None if number is None else ids.get(number)

    def mark_paused(self, known: _Known, epoch: int | None) -> None:
        """Record a pause (the epoch it paused after) or, with None, a resume."""
        self.call(lambda: self.storage.set_trial_user_attr(known.trial_id, keys.PAUSED, epoch),
                  "record a pause" if epoch is not None else "record a resume")
        self.changed()

    def _running(self) -> list[optuna.trial.FrozenTrial]:
        return self.call(
            lambda: self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)),
            "list running trials",
        )

    def _all_trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.call(lambda: self.study.get_trials(deepcopy=False), "list trials")


class OptunaSearcher(Searcher):
    """Ray Tune asks it for configs; it asks the study, until the study holds `n_trials`
    trials, `max_concurrent` at a time."""

    def __init__(self, link: StudyLink, metric: str, mode: str, fixed: dict[str, Any],
                 n_trials: int, max_concurrent: int) -> None:
        super().__init__(metric=metric, mode=mode)
        self.link, self.fixed = link, dict(fixed)
        self.n_trials, self.max_concurrent = n_trials, max_concurrent
        self._asked: int | None = None  # counted from the study by each driver, on first use

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_asked": None}

    def finished(self) -> bool:
        """Nothing more to ask: the study holds the budget's trials, or the job was cancelled."""
        if control_of(self.link.study_name).cancelled():
            return True
        if self._asked is None:
            self._asked = self.link.asked()
        return self._asked >= self.n_trials

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.finished():
            return Searcher.FINISHED  # type: ignore[return-value]
        if len(self.link.live) >= self.max_concurrent:
            return None  # none yet
        policy = self.link.strategy.freeze_thaw()
        if policy is not None and self.link.decide(lambda: self.link.to_resume(policy)) is not None:
            return None  # the free slot resumes a paused trial (the scheduler's choice)
        started = time.perf_counter()
        study = self.link.study
        trial = self.link.adopt() or self.link.call(
            lambda: self.link.strategy.ask(study), "ask the study for a trial"
        )
        # an adopted trial's sampled values come back as they were (Optuna keeps a trial's params)
        config = {**self.link.call(lambda: self.link.strategy.space.sample(trial), "sample a trial"),
                  **self.fixed}
        request = config.get(COSTS_REQUEST)
        if request is not None:  # a deployment-aware job: costs first, known ones from the job
            key = cost_key(config, request)
            config[COSTS_REQUEST] = {**request, "key": key, "known": self.link.known_costs(key)}
        self.link.call(lambda: trial.set_user_attr(keys.RAY_TRIAL_ID, trial_id), "tag a trial")
        self.link.call(lambda: trial.set_user_attr(keys.CONFIG, config), "record a trial config")
        self.link.remember(trial_id, trial).ask_ms = round((time.perf_counter() - started) * 1e3, 2)
        self._asked = (self._asked or 0) + 1
        self.link.emit("start", trial.number)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        known = self.link.lookup(trial_id)
        if known is None or known.finished:
            return  # pruned already (told by the scheduler), or not ours
        frozen = self.link.frozen(known)
        if frozen.state.is_finished():
            known.finished = True
            return
        values = self.link.values_of(frozen)
        if values is None and not error and control_of(self.link.study_name).cancelled():
            self.link.uncount(known.trial_id, "a cancel stopped it before its first epoch")
            self.link.tell(known, TrialState.FAIL)
        elif error or values is None:
            self.link.tell(known, TrialState.FAIL)
            JobStopper.trial_failed(self.link.study_name)
        else:
            self.link.tell(known, TrialState.COMPLETE, values)

    # Ray checkpoints searchers; ours keeps its state in the study, so there is nothing to save.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as handle:
            handle.write(self.link.study_name)

    def restore(self, checkpoint_path: str) -> None:
        self.link._known.clear()
        self._asked = None


class JobSearch(SearchGenerator):
    """Ray's search generator, ended by the job's budget as the study counts it, by a cancel,
    or by the stopper ending this run; never by an end Ray saved with the experiment. Ray
    keeps its own trial count and a `finished` flag in its saved state, and a cancel sets that
    flag (the stopper's `stop_all`, the searcher saying FINISHED): `Tuner.restore` brought it
    back, and a resumed cancelled job ended at once with its budget unspent."""

    def __init__(self, searcher: OptunaSearcher) -> None:
        super().__init__(searcher)
        self.job_searcher = searcher
        self.stopped = False  # by the stopper, in this run

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stopped": False}

    def set_finished(self) -> None:
        self.stopped = True

    def is_finished(self) -> bool:
        return self.stopped or self.job_searcher.finished()


class OptunaPruningScheduler(FIFOScheduler):
    """Reports each epoch to the study and stops the trials its pruner prunes. It also keeps
    the count of the trials Ray runs (the searcher's concurrency: restored ones included), and
    starts no trial once the job is cancelled, or by a driver that no longer holds its job."""

    def __init__(self, link: StudyLink, metric: str, n_trials: int = 0,
                 max_concurrent: int = 1) -> None:
        super().__init__()
        self.link, self.objective = link, metric
        self.n_trials, self.max_concurrent = n_trials, max_concurrent
        self.policy = link.strategy.freeze_thaw()  # None: trials are only ever stopped

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # fixed at construction

    def on_trial_add(self, tune_controller: Any, trial: RayTrial) -> None:
        if trial.status in (RayTrial.TERMINATED, RayTrial.ERROR):
            return
        retried = trial.trial_id in self.link.added
        self.link.added.add(trial.trial_id)
        if self.policy is not None and trial.status != RayTrial.PAUSED:
            known = self.link.lookup(trial.trial_id)
            if known is not None and not known.finished and keys.is_paused(
                    self.link.frozen(known).user_attrs, TrialState.RUNNING):
                if retried:
                    # its worker died while Ray paused it: Ray retries it from its checkpoint
                    # and has filed it as pending already (setting PAUSED here would break
                    # Ray's own books: an AssertionError ends the job), so it goes on, resumed
                    self.link.paused.discard(trial.trial_id)
                    self.link.mark_paused(known, None)
                    self.link.emit("running", known.number)
                else:
                    # restored by `Tuner.restore`, which makes a paused trial PENDING: paused it
                    # stays (Ray files it by the status it has after this call) until resumed
                    trial.set_status(RayTrial.PAUSED)
        if trial.status == RayTrial.PAUSED:
            self.link.paused.add(trial.trial_id)
        else:
            self.link.live.add(trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: RayTrial) -> None:
        self.link.live.discard(trial.trial_id)

    def on_trial_complete(self, tune_controller: Any, trial: RayTrial, result: dict[str, Any]) -> None:
        self.link.live.discard(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: RayTrial) -> None:
        self.link.live.discard(trial.trial_id)
        self.link.paused.discard(trial.trial_id)

    def choose_trial_to_run(self, tune_controller: Any) -> RayTrial | None:
        """Ray starts waiting trials right after asking this (on an actor that is ready, or on
        a finished trial's), before its stopper looks at the cancel: a cancel seen here stops
        them instead, each told FAIL, never having run (nor counted against the budget: a
        resumed job runs another in its place). One Ray has not yet given a folder
        gets it first (what Ray does before it starts one): a trial's end is kept there."""
        job = control_of(self.link.study_name)
        job.require_held(self.link.study_name, "start a trial")
        if job.cancelled():
            for waiting in tune_controller.get_trials():
                if waiting.status in (RayTrial.PENDING, RayTrial.PAUSED):
                    if waiting.trial_id in self.link.paused:  # ends pruned (finish_leftovers)
                        self.link.paused.discard(waiting.trial_id)
                    elif (known := self.link.lookup(waiting.trial_id)) is not None:
                        self.link.uncount(known.trial_id, "a cancel stopped it before it started")
                    waiting.init_local_path()
                    tune_controller.stop_trial(waiting)
            return None
        if self.policy is not None:
            return self._freeze_thaw_choice(tune_controller)
        chosen: RayTrial | None = super().choose_trial_to_run(tune_controller)
        return chosen

    def _freeze_thaw_choice(self, tune_controller: Any) -> RayTrial | None:
        """A trial waiting to start (a new one, a retried one) first, as Ray would; else, with
        a slot free, the paused trial the policy resumes. Once the budget is spent and nothing
        runs, the policy gives up paused trials (told PRUNED, stopped in Ray: Ray's run ends
        only when none is left); one it keeps is resumed."""
        assert self.policy is not None
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == RayTrial.PENDING and trial.trial_id not in self.link.paused:
                return trial
        if not self.link.paused or len(self.link.live) >= self.max_concurrent:
            return None
        by_id = {t.trial_id: t for t in trials}
        # a trial being paused stays RUNNING in Ray until its checkpoint is saved
        ready = {t.trial_id for t in trials if t.status == RayTrial.PAUSED}
        policy = self.policy
        chosen = self.link.decide(lambda: self.link.to_resume(policy, ready))
        log.debug("freeze-thaw: live %s, paused %s, ready %s: resume %s", self.link.live,
                  self.link.paused, ready, chosen)
        if chosen is None and self.link.paused <= ready and not self.link.live \
                and self.link.asked() >= self.n_trials:
            ids = self.link.ray_ids()
            for number in self.link.decide(lambda: policy.give_up(self.link.curves())):
                if ids.get(number) in self.link.paused:
                    self._give_up(tune_controller, by_id.get(ids[number]))
            chosen = next(iter(sorted(self.link.paused & ready)), None)  # any the policy kept
        trial = by_id.get(chosen) if chosen is not None else None
        if trial is None:
            return None
        self._resume(trial)
        return trial

    def _resume(self, trial: RayTrial) -> None:
        self.link.paused.discard(trial.trial_id)
        self.link.live.add(trial.trial_id)
        if (known := self.link.lookup(trial.trial_id)) is not None:
            self.link.mark_paused(known, None)
            self.link.emit("running", known.number)

    def _give_up(self, tune_controller: Any, trial: RayTrial | None) -> None:
        """End a paused trial as pruned; retention then removes its checkpoints."""
        if trial is None:
            return
        self.link.paused.discard(trial.trial_id)
        if (known := self.link.lookup(trial.trial_id)) is not None:
            self.link.tell(known, TrialState.PRUNED)
        if trial.status == RayTrial.PAUSED or trial.status == RayTrial.PENDING:
            trial.init_local_path()
            tune_controller.stop_trial(trial)

    def _should_pause(self, number: int) -> bool:
        assert self.policy is not None
        curves = self.link.curves()
        curve = next((c for c in curves if c.number == number), None)
        return curve is not None and self.policy.should_pause(curve, curves)

    def _pause(self, tune_controller: Any, trial: RayTrial, known: _Known, epoch: int) -> str:
        """Pause `trial` after `epoch` (Ray saves its checkpoint and stops its actor); beyond
        `max_paused` paused trials, the worst of them is given up instead."""
        self.link.mark_paused(known, epoch)
        self.link.live.discard(trial.trial_id)
        self.link.paused.add(trial.trial_id)
        self.link.emit("paused", known.number, epoch=epoch)
        assert self.policy is not None
        if len(self.link.paused) <= self.policy.max_paused(self.max_concurrent):
            return TrialScheduler.PAUSE
        ids = self.link.ray_ids()
        by_id = {t.trial_id: t for t in tune_controller.get_trials()}
        givable = {i for i in self.link.paused  # this one, and those Ray finished pausing
                   if i == trial.trial_id or getattr(by_id.get(i), "status", None) == RayTrial.PAUSED}
        paused = [c for c in self.link.curves()
                  if c.state == "paused" and ids.get(c.number) in givable]
        policy = self.policy
        evicted = self.link.decide(lambda: policy.worst(paused))  # `evict`, with those pausing
        if evicted == known.number:
            self.link.paused.discard(trial.trial_id)
            self.link.tell(known, TrialState.PRUNED)
            return TrialScheduler.STOP
        self._give_up(tune_controller, by_id.get(ids[evicted]))
        return TrialScheduler.PAUSE

    def on_trial_result(self, tune_controller: Any, trial: RayTrial, result: dict[str, Any]) -> str:
        known = self.link.lookup(trial.trial_id)
        if known is None:
            return TrialScheduler.CONTINUE
        if known.finished:
            return TrialScheduler.STOP  # pruned before a driver restart: stays stopped
        if TRIAL_ERROR in result:  # its own error comes next: it fails once, not retried
            no_retries(trial)
            line = str(result[TRIAL_ERROR])
            self.link.call(lambda: self.link.storage.set_trial_user_attr(
                known.trial_id, keys.ERROR, line), "record a trial's error")
            return TrialScheduler.CONTINUE
        if COSTS_RESULT in result:  # measured before training: over a limit, it never trains
            costs = {name: float(result[name]) for name in COSTS if result.get(name) is not None}
            if broken := self.link.record_costs(known, str(result[COSTS_RESULT]), costs):
                self.link.tell(known, TrialState.PRUNED)
                self.link.emit("over_limit", known.number, note=", ".join(
                    f"{name} {value:g} > {limit:g}" for name, (value, limit) in broken.items()))
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE
        value, epoch = result.get(self.objective), result.get("epoch")
        if value is None or epoch is None:
            return TrialScheduler.CONTINUE
        started = time.perf_counter()
        handle, study = self.link.trial(known), self.link.study
        last = int(epoch) >= self.link.strategy.max_epochs
        prune = self.link.call(
            lambda: self.link.strategy.report(study, handle, int(epoch), float(value), last),
            "report an epoch and ask the pruner")
        self.link.changed()
        if (seconds := result.get("epoch_seconds")) is not None:
            self.link.seconds.setdefault(known.number, {})[int(epoch)] = float(seconds)
        self.link.emit("report", known.number, float(value), int(epoch))
        known.report_ms.append((time.perf_counter() - started) * 1e3)
        if prune:
            self.link.tell(known, TrialState.PRUNED)
            return TrialScheduler.STOP
        if self.policy is not None and not last and self.link.decide(
                lambda: self._should_pause(known.number)):
            return self._pause(tune_controller, trial, known, int(epoch))
        return TrialScheduler.CONTINUE


def bridge(
    link: StudyLink, metric: str, mode: str, fixed: dict[str, Any], n_trials: int,
    max_concurrent: int,
) -> tuple[JobSearch, OptunaPruningScheduler]:
    searcher = OptunaSearcher(link, metric, mode, fixed, n_trials, max_concurrent)
    return JobSearch(searcher), OptunaPruningScheduler(link, metric, n_trials, max_concurrent)

