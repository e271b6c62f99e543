"""`tuitune recipe PROFILE --budget 3`: find the fine-tuning recipe for this data and backbone within `budget` times
the time of one full fine-tuning run, by successive halving over the strategies tuitune has (`CANDIDATES`).

Every candidate is the profile with a few keys set (`--set` items). Rungs are epoch counts (`rungs`: the profile's
epochs divided by 3, 9, ...): every candidate trains to the first rung, the best third (by the profile's
`train.checkpoint_metric`) goes on to the next, and so on to the last epoch. A trial that goes on is resumed from
its own `last` checkpoint (the schedule is the whole run's, so the epochs it trains are the ones a whole run
would), and the early rungs are cheap where a candidate trains its head on the feature cache.

The budget: the `full` candidate runs first; its first rung's time per epoch, times the profile's epochs, is one
full fine-tuning run (`Budget`). Each trial is costed as if every epoch were a full fine-tuning epoch (none is
slower), a candidate starts only when the rest of the search still fits, and the time to take one candidate to
the last epoch is kept in reserve from the start, so the search ends with a trained winner within the budget.

The search is kept as an Optuna study in `OUT/journal.log` (`recipe` is each trial's one parameter; each epoch's
metric is reported), so the sweep's leaderboard screen and printer show it; the winner's whole profile is written
to `OUT/recipe.toml` with the `tuitune train` line that reproduces it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuitune.config import apply_overrides, dump_toml, profile_from_dict, profile_to_dict, read_toml
from tuitune.engine.commands import Control
from tuitune.engine.events import EpochEnded, Event, RunFailed, RunFinished
from tuitune.engine.record.files import write_text_atomic
from tuitune.errors import UserError
from tuitune.sweep.board import format_board, read_board
from tuitune.sweep.space import natural_direction, set_line

ETA = 3  # a third of each rung goes on
# name -> the `--set` items that make the candidate from the profile ("{lr/10}": the profile's LR over ten). The
# `full` candidate comes first: its time per epoch sets the budget.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "full": ('strategy.kind="full"',),
    "progressive": ('strategy.kind="progressive"',),
    "progressive+train_bn": ('strategy.kind="progressive"', "strategy.train_bn=true"),
    "progressive+adabn": ('strategy.kind="progressive"', 'strategy.adabn="phase"'),
    "progressive+shift": ('strategy.kind="progressive"', 'strategy.order="shift"'),
    "progressive+best+restart": (
        'strategy.kind="progressive"',
        "strategy.restore_best_phase=true",
        'train.schedule="cosine"',
        'train.restart="phase"',
    ),
    "lp_ft": ('strategy.kind="lp_ft"',),
    "auto_rgn": ('strategy.kind="auto_rgn"',),
    "full-lr/10": ('strategy.kind="full"', "train.lr={lr/10}"),
}


def rungs(epochs: int, eta: int = ETA) -> list[int]:
    """The epoch counts at which candidates are compared, smallest first: 1, then `epochs / eta**k` ... `epochs / eta`,
    `epochs` (rounded, each once)."""
    out, size = {1, epochs}, epochs / eta
    while size >= 1:
        out.add(round(size))
        size /= eta
    return sorted(out)


@dataclasses.dataclass
class Budget:
    """`budget` times one full fine-tuning run, once the `full` candidate's first rung measured an epoch (`per_epoch`,
    seconds, its setup included); `spent` counts every trial's time."""

    budget: float
    epochs: int
    per_epoch: float = math.inf
    spent: float = 0.0

    @property
    def total(self) -> float:
        return self.budget * self.per_epoch * self.epochs

    def cost(self, epochs: int) -> float:
        """What training `epochs` more epochs is reckoned to cost (a full fine-tuning epoch each)."""
        return epochs * self.per_epoch

    def fits(self, epochs: int, reserve: int) -> bool:
        """Whether `epochs` more, with `reserve` epochs still kept for the winner after, fit in the budget."""
        return self.spent + self.cost(epochs + reserve) <= self.total


@dataclasses.dataclass
class Trial:
    name: str
    overrides: list[str]
    study_trial: Any
    run_dir: Path
    epochs: int = 0  # epochs trained so far
    values: list[float] = dataclasses.field(default_factory=list)  # the metric of each epoch
    seconds: float = 0.0
    ended: str = ""  # "" while it may go on; "done", "failed" or "pruned"

    def best(self, maximize: bool) -> float | None:
        return (max if maximize else min)(self.values) if self.values else None


class RecipeSearch:
    """One search (see the module): `run()` returns the winner; `clock` measures the trials' time (tests give one
    of their own)."""

    def __init__(
        self,
        path: str,
        overrides: list[str],
        out: Path,
        budget: float,
        candidates: Mapping[str, tuple[str, ...]] | None = None,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.path, self.base_overrides, self.out, self.say, self.clock = path, overrides, out, say, clock
        self.base = Path(path).resolve().parent
        self.table = apply_overrides(read_toml(Path(path)), overrides)
        self.table.pop("sweep", None)
        self.profile = profile_from_dict(self.table, path, self.base)
        self.metric = self.profile.train.checkpoint_metric
        self.maximize = natural_direction(self.profile, self.metric) == "maximize"
        self.candidates = dict(candidates if candidates is not None else CANDIDATES)
        if "full" not in self.candidates:
            raise UserError("recipe: the candidates must include `full`: its epochs measure the budget")
        self.candidates = {"full": self.candidates.pop("full"), **self.candidates}
        self.budget = Budget(budget, self.profile.train.epochs)
        self.rungs = rungs(self.profile.train.epochs)
        self.trials: list[Trial] = []

    # --------------------------------------------------------------------------------------------- trials
    def _overrides(self, items: tuple[str, ...]) -> list[str]:
        lr = self.profile.train.lr
        return [item.replace("{lr/10}", repr(lr / 10)) for item in items]

    def _profile(self, trial: Trial) -> Any:
        table = apply_overrides(self.table, trial.overrides)
        profile = profile_from_dict(table, self.path, self.base)
        return dataclasses.replace(profile, name=f"{self.profile.name}-{trial.name}")

    def _start(self, name: str) -> Trial | None:
        """A trial for candidate `name` in the study, or None when its profile is refused (said, and recorded)."""
        from optuna.distributions import CategoricalDistribution

        self.study.enqueue_trial({"recipe": name})  # one parameter, its value fixed: the candidate
        st = self.study.ask({"recipe": CategoricalDistribution(list(self.candidates))})
        trial = Trial(name, self._overrides(self.candidates[name]), st, self.out / f"trial-{st.number:03d}-{name}")
        st.set_user_attr("run_dir", str(trial.run_dir))
        st.set_user_attr("overrides", trial.overrides)
        try:
            self._profile(trial)
        except UserError as e:
            self._end(trial, "failed", str(e))
            return None
        self.trials.append(trial)
        return trial

    def _train_to(self, trial: Trial, epochs: int) -> None:
        """Train `trial` until `epochs` epochs are done (resumed from its `last` after the first time)."""
        from tuitune.remote.host import serve_run

        control, seen = Control(), []

        def sink(event: Event) -> None:
            if isinstance(event, EpochEnded):
                value = event.value(self.metric)
                if math.isfinite(value):
                    trial.values.append(value)
                    trial.study_trial.report(value, event.epoch)
                seen.append(event.epoch)
                if event.epoch >= epochs and epochs < self.profile.train.epochs:
                    control.request_stop()  # at this epoch's end: `last` holds it, the next rung resumes it

        resume = trial.run_dir if trial.epochs else None
        t0 = self.clock()
        final = serve_run(
            self._profile(trial), trial.run_dir, sink, control, interactive=False, mode="headless", resume=resume
        )
        spent = self.clock() - t0
        trial.seconds += spent
        self.budget.spent += spent
        trial.epochs = max(seen, default=trial.epochs)
        trial.study_trial.set_user_attr("time_s", trial.seconds)
        if isinstance(final, RunFailed) or not trial.values:
            self._end(trial, "failed", final.message if isinstance(final, RunFailed) else "no epoch ended")
        elif isinstance(final, RunFinished) and final.status == "finished":
            self._end(trial, "done")
        else:
            trial.study_trial.set_user_attr("paused", True)

    def _end(self, trial: Trial, how: str, error: str = "") -> None:
        from optuna.trial import TrialState

        trial.ended = how
        st = trial.study_trial
        st.set_user_attr("paused", False)
        if error:
            st.set_user_attr("error", error)
            self.say(f"{trial.name}: failed: {error}")
        if how == "done":
            self.study.tell(st, trial.best(self.maximize))
        else:
            self.study.tell(st, state=TrialState.PRUNED if how == "pruned" else TrialState.FAIL)
        self.say(format_board(read_board(self.out)[0], self.metric))

    # --------------------------------------------------------------------------------------------- rungs
    def _first_rung(self) -> None:
        """Every candidate to the first rung while the budget, with a winner's way to the last epoch kept in
        reserve, allows; the `full` candidate first, whose time sets the budget."""
        first, last = self.rungs[0], self.rungs[-1]
        for name in self.candidates:
            if self.trials and not self.budget.fits(first, last - first):
                self.say(
                    f"{name}: not tried: the budget is spent ({self.budget.spent:.0f} s of {self.budget.total:.0f})"
                )
                continue
            trial = self._start(name)
            if trial is None:
                continue
            self._train_to(trial, first)
            if name == "full" and trial.epochs:
                self.budget.per_epoch = trial.seconds / trial.epochs
                self.say(
                    f"one full fine-tuning run: ~{self.budget.per_epoch * self.budget.epochs:.0f} s; "
                    f"budget {self.budget.budget:g} x that: {self.budget.total:.0f} s"
                )

    def _rank(self, at: int) -> list[Trial]:
        alive = [t for t in self.trials if not t.ended or (t.ended == "done" and t.epochs >= at)]
        sign = -1.0 if self.maximize else 1.0
        return sorted(alive, key=lambda t: sign * (t.best(self.maximize) or 0.0))

    def _next_rung(self, index: int) -> None:
        """The best third of the trials at rung `index - 1` (at least one) train on to rung `index`, as far as the
        budget allows; the others are pruned."""
        before, at, last = self.rungs[index - 1], self.rungs[index], self.rungs[-1]
        ranked = [t for t in self._rank(before) if not t.ended]
        keep = max(1, math.ceil(len(ranked) / ETA))
        for place, trial in enumerate(ranked):
            if place < keep and (place == 0 or self.budget.fits(at - trial.epochs, last - at)):
                self._train_to(trial, at)
            else:
                self._end(trial, "pruned")

    def run(self) -> dict[str, Any]:
        import optuna

        from tuitune.sweep.runner import drop_losing_weights
        from tuitune.sweep.study import STUDY_NAME, quiet_optuna, storage_for

        quiet_optuna()
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / "journal.log").exists():
            raise UserError(f"recipe: {self.out} already holds a search; give another --out")
        self.study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage_for(self.out),
            direction="maximize" if self.maximize else "minimize",
        )
        self.study.set_user_attr("metric", self.metric)
        self._first_rung()
        for index in range(1, len(self.rungs)):
            self._next_rung(index)
        for trial in self.trials:  # a candidate that finished its epochs early (early stopping) is done already
            if not trial.ended:
                self._end(trial, "pruned")
        drop_losing_weights(self.study)
        return self._write()

    def _write(self) -> dict[str, Any]:
        """`OUT/recipe.toml`: the winner's whole profile, named as the profile; and what to say about it."""
        done = [t for t in self.trials if t.ended == "done"]
        if not done:
            raise UserError(f"recipe: no candidate trained to the last epoch ({self.out}); see its leaderboard")
        winner = sorted(done, key=lambda t: (-1.0 if self.maximize else 1.0) * (t.best(self.maximize) or 0.0))[0]
        value = winner.best(self.maximize)
        profile = dataclasses.replace(self._profile(winner), name=self.profile.name)
        tail = " ".join(f"--set {o}" for o in self.base_overrides)
        line = f"tuitune train {self.path} {tail + ' ' if tail else ''}{set_line(_as_params(winner.overrides))}"
        header = (
            f"# recipe: {winner.name} ({self.metric} {value:.6g} after {winner.epochs} epochs), found by "
            f"`tuitune recipe` in {self.budget.spent:.0f} s of a {self.budget.total:.0f} s budget "
            f"({self.budget.budget:g} x one full fine-tuning run, ~{self.budget.per_epoch * self.budget.epochs:.0f} s)"
            f"\n# reproduce: {line}\n"
        )
        write_text_atomic(self.out / "recipe.toml", header + dump_toml(profile_to_dict(profile)))
        self.say(f"recipe: {winner.name}, {self.metric} {value:.4f} -> {self.out / 'recipe.toml'}\nreproduce: {line}")
        return {
            "recipe": winner.name,
            "value": value,
            "trials": len(self.trials),
            "budget_s": self.budget.total,
            "spent_s": self.budget.spent,
            "path": str(self.out / "recipe.toml"),
        }


def _as_params(overrides: list[str]) -> dict[str, Any]:
    """`--set` items back into (key, value) pairs, for the reproduce line."""
    from tuitune.config.parse import parse_override

    return {".".join(keys): value for keys, value in map(parse_override, overrides)}


def run_recipe(
    path: str,
    overrides: list[str],
    out: Path,
    *,
    budget: float = 3.0,
    candidates: Mapping[str, tuple[str, ...]] | None = None,
    say: Callable[[str], None] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The `tuitune recipe` command (headless): the search, its leaderboard printed as trials end, the winner
    written; what was found (see `RecipeSearch._write`)."""
    if not budget > 0:
        raise UserError(f"recipe: --budget must be > 0, got {budget:g}")
    return RecipeSearch(path, overrides, out, budget, candidates, say, clock).run()
