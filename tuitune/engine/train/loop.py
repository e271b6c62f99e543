"""The training loop. Read `Trainer._train_epoch` top to bottom: it is the whole story of a step.

The trainer talks to the world through `emit(event)` only and listens through `Control` only, at step
boundaries, where its `controller.RunController` applies the commands and changes phases. Host syncs (`.item()`,
`.tolist()`) happen every `train.log_every` steps and at epoch end, never per step: running sums stay on the device,
and so does the non-finite check (`guards.NonFiniteGuard`), whose count is read with the metrics. Failures (bad
input, out of memory, any exception) leave through the session.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuitune.config import RunProfile, profile_to_dict
from tuitune.engine.commands import CUT_SHORT, Control
from tuitune.engine.data.batches import to_device
from tuitune.engine.events import (
    EpochEnded,
    Event,
    MetricsUpdated,
    RunFinished,
    RunStarted,
    Warned,
)
from tuitune.engine.model.groups import Backbone
from tuitune.engine.record.system import SharedEmit, SystemSampler
from tuitune.engine.train import compile_watch, strategy
from tuitune.engine.train.cache_keeper import CacheKeeper
from tuitune.engine.train.controller import RunController
from tuitune.engine.train.distributed import LOCAL, DistContext
from tuitune.engine.train.feature_cache import FeatureCache
from tuitune.engine.train.memory_run import plan_run
from tuitune.engine.train.parts import RunParts, build_parts
from tuitune.engine.train.phase_best import PhaseBest
from tuitune.engine.train.running_sums import RunningSums
from tuitune.engine.train.state_checkpoint import Checkpointer
from tuitune.engine.train.step_clock import COMPUTE, DATA, OPTIMIZER, REST, StepClock
from tuitune.engine.train.system_watch import watch_system
from tuitune.engine.train.tasks import task_of
from tuitune.engine.train.trainer_state import TrainerState

Emit = Callable[[Event], None]
# After a run that ended well, with its best weights loaded: (run_dir, profile, backbone, classes, emit) ->
# (export folder, compression report). The session passes `tools.after_run.export_and_compress`.
AfterRun = Callable[[Path, RunProfile, Backbone, tuple[str, ...], Emit], tuple[str, dict[str, Any] | None]]
__all__ = ["AfterRun", "Trainer"]


class Trainer:
    """One fine-tuning run: `Trainer(profile, run_dir, emit, control).run()`. What follows a run that ended well
    (export, compression) is the caller's: `after_run`, none by default.

    With several ranks (`dist`), every rank runs a Trainer; rank 0's `control` is the one that counts and its
    events are the run's (the caller gives the other ranks a sink that drops them); see `distributed`."""

    def __init__(
        self,
        profile: RunProfile,
        run_dir: Path,
        emit: Emit,
        control: Control,
        *,
        interactive: bool = False,
        resume: Path | None = None,
        after_run: AfterRun | None = None,
        dist: DistContext = LOCAL,
    ) -> None:
        self.sink = SharedEmit(emit)  # the system sampler's thread emits too (`system_watch`)
        emit = self.sink
        self.profile, self.run_dir, self.emit, self.control = profile, run_dir, emit, control
        self.system: SystemSampler | None = None
        self.compiles: compile_watch.CompileWatch | None = None  # `train.compile`: what torch.compile compiled
        self.after_run, self.dist = after_run, dist
        task = task_of(profile)
        self.parts: RunParts = build_parts(profile, run_dir, emit, dist, build=task.build)
        self.obj = task.objective(profile, self.parts, emit)
        self.cache = FeatureCache(self.parts, profile)
        # each phase's memory, measured on a real batch before anything else holds memory ("auto": the size chosen)
        profile, self.memory = plan_run(self.parts, profile, self.obj, self.cache)
        self.profile = profile
        self.st = TrainerState(self.parts, profile, self.obj.scorer)
        self.phase_best = PhaseBest(self.st, run_dir / "checkpoints")
        self.checkpoints = Checkpointer(self.st, run_dir / "checkpoints", emit, self.obj, self.phase_best)
        self.cache_keeper = CacheKeeper(self.cache, self.st, emit)
        if resume is not None:
            self.checkpoints.resume_from(resume)
        self.resumed = resume is not None
        self.parts.rewrap()  # DDP hooks for the trainable set of the phase the run starts in
        self.controller = RunController(
            profile,
            run_dir,
            interactive=interactive,
            control=control,
            dist=dist,
            emit=emit,
            parts=self.parts,
            obj=self.obj,
            st=self.st,
            checkpoints=self.checkpoints,
            cache=self.cache_keeper,
            phase_best=self.phase_best,
        )
        self.val_views: dict[str, Any] = {}  # the last validation's confusion matrix and worst errors
        self.clock = StepClock.on(self.parts.device)  # where each step's time goes, read with the metrics

    # ------------------------------------------------------------------------------------------------- run
    def run(self) -> RunFinished:
        p, st = self.parts, self.st
        self.emit(
            RunStarted(
                run_name=self.profile.name,
                run_dir=str(self.run_dir),
                device=p.device_label,
                layers=st.layer_infos(),
                phases=p.phases,
                phase=st.phase,
                epochs=self.profile.train.epochs,
                steps_per_epoch=p.steps_per_epoch,
                train_size=len(p.bundle.train),
                val_size=len(p.bundle.val),
                classes=p.bundle.classes,
                profile=profile_to_dict(self.profile),
                start_epoch=st.epoch,
                warnings=p.warnings + tuple(self.checkpoints.notes),
                metric=self.obj.scorer.name,
                higher_is_better=self.obj.scorer.higher_is_better,
                start_step=st.global_step,
                start_elapsed_s=st.elapsed(),
                world_size=self.dist.world,
                loader_workers=p.train_loader.num_workers,
            )
        )
        self.emit(self.memory)
        self.system = watch_system(self.dist, p.device, self.profile.train.system_every_s, self.sink.from_thread)
        self.compiles = compile_watch.CompileWatch().open() if p.compiled else None
        # Everything built so far lives as long as the run: out of the collector's sight, a full collection no
        # longer walks the model and the data (80-200 ms pauses on CPU), in the training thread or the UI's. A heap
        # someone froze already (the dashboard; a test session its imports) is theirs: the run leaves it frozen and
        # does not unfreeze it at its end (`gc.unfreeze` thaws every frozen object, not only the run's). The
        # collection always runs: it ends earlier runs' garbage, their DataLoader workers included.
        gc.collect()
        froze = gc.get_freeze_count() == 0
        if froze:
            gc.freeze()
        try:
            self.controller.measure_shift("start")
            return self._epochs()
        finally:
            self._stop_watching()
            if self.compiles is not None:
                self.compiles.close()
            p.end_workers()
            if froze:
                gc.unfreeze()

    def _stop_watching(self) -> None:
        """No system sample after the run's last event (`_finish`, or a failure the session records)."""
        if self.system is not None:
            self.system.stop()

    def _epochs(self) -> RunFinished:
        p, st, steer = self.parts, self.st, self.controller
        if not self.resumed:  # phase 0 starts now
            steer.auto_adabn("start")
            if self.profile.strategy.phase_lr == "find":
                steer.phase_lr.find()
        else:  # `last` is saved before an epoch end's phase check: make it now (a no-op where it was made), so a run
            steer.maybe_next_phase()  # killed after it, or ended at its last epoch and given more, unfreezes on time
        while st.epoch < self.profile.train.epochs and steer.stop_status is None:
            if steer.stop_agreed():  # Ctrl+C during validation or a save: stop on the epoch boundary
                steer.stop(*self.control.stop_status)
                break
            epoch_t0 = time.perf_counter()
            train = self._train_epoch()
            if train is None:  # interrupted or stopped mid-epoch
                break
            val = self.evaluate(p.val_loader)
            self._end_epoch(train, val, time.perf_counter() - epoch_t0)
        return self._finish(st.elapsed())

    # ----------------------------------------------------------------------------------------------- epoch
    def _train_epoch(self) -> dict[str, float] | None:
        p, st, cfg = self.parts, self.st, self.profile.train
        model, device, k = p.model, p.device, cfg.accumulate_steps
        strategy.train_mode(model, self.profile.strategy)
        self.cache_keeper.refresh()
        st.begin_epoch()  # st.epoch_sums: this epoch's running sums, on the device (no per-step host sync)
        obj = self.obj
        window, seen = RunningSums(device, obj.scorer), 0
        micro: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # this step's batches (accumulation)
        batches = self.cache.batches() if self.cache.active else ((x, y, False) for x, y in p.train_loader)
        clock = self.clock
        clock.restart()
        for i, (x, y, cached) in enumerate(batches):
            step = i // k + 1  # the optimizer step this batch belongs to (1-based within the epoch)
            if step <= st.skip_steps:  # resuming mid-epoch: replay the same shuffled order up to where we were
                continue
            if i >= p.micro_per_epoch:
                break
            if i and i == st.skip_steps * k:
                clock.restart()  # the replayed batches were no step's
            size = min(k, p.micro_per_epoch - (step - 1) * k)  # batches in this step (the epoch's last: fewer)
            # fetch the batch onto the device (Mixup/CutMix there, when asked)
            x, y = obj.targets(to_device(x, device, p.channels_last), y.to(device, non_blocking=True))
            clock.mark(DATA)
            # forward (bf16 autocast on CUDA) and loss (+ distillation, penalties)
            with p.autocast():
                out, aux = (self.cache.forward(x), None) if cached else obj.forward(p.forward, x)
                loss = obj.loss(out, y, x, aux)
            # backward: gradients add up over the step's batches, each loss scaled as a share of one big batch
            # (several ranks: DDP all-reduces them; a rank's share of an uneven last global batch weighs in too)
            if not micro:
                st.optimizer.zero_grad(set_to_none=True)
            factor = p.batch_share(i) / size
            (loss * factor if factor != 1.0 else loss).backward()
            clock.mark(COMPUTE)
            micro.append((loss.detach(), out.detach(), y))
            seen += y.shape[0]
            if len(micro) < size:
                continue
            self._optimizer_step(micro, window)
            clock.mark(OPTIMIZER)
            clock.step_done()
            micro = []
            st.step_in_epoch = step
            # every N steps: the one host sync, and events
            if step % cfg.log_every == 0:
                self._read_window(window, step)
            # commands, pause, stop: at the step boundary (several ranks: at the metric reads)
            if not self.controller.between_steps(step):
                if (
                    not self.controller.stop_status or self.controller.stop_status[0] != "stopped_early"
                ):  # cut short: leave
                    return None
                break  # `s`: the epoch ends here, validated and recorded like any other
            clock.mark(REST)
        st.skip_steps = 0
        loss, score, (bad,) = st.epoch_sums.read(self.dist.max(st.guard.bad), reduce=self.dist.sum)
        self._settle(bad)
        return {"loss": loss, "score": score, "samples": seen * self.dist.world}

    def _optimizer_step(
        self, micro: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], window: RunningSums
    ) -> None:
        """Clip, non-finite check (a device flag), step, schedule, EMA; then the step's batches into the running
        sums on the device (a non-finite step adds nothing)."""
        st = self.st
        loss = micro[0][0] if len(micro) == 1 else torch.stack([m[0] for m in micro]).mean()
        finite = self._clip_and_check(loss)
        if self.profile.strategy.kind == "auto_rgn" and st.step_in_epoch == 0:  # an epoch's first step (not resumed
            st.rescale_by_rgn()  # mid-epoch: the factors came back with the optimizer's param groups)
        st.apply_lr()
        st.optimizer.step()
        st.guard.after_step(st.optimizer)
        self.obj.after_step(self.parts.model, st.global_step)  # the EMA of the weights
        st.global_step += 1
        for m_loss, out, y in micro:
            batch = window.batch(m_loss, out, y, finite)
            st.epoch_sums.add_batch(batch)
            window.add_batch(batch)

    def _clip_and_check(self, loss: torch.Tensor) -> torch.Tensor:
        """Clip, then flag the step on the device; under `train.on_nonfinite = "skip"` a flagged step's gradients
        are zeroed before `optimizer.step()` (see `guards.NonFiniteGuard`)."""
        st, guard, clip = self.st, self.st.guard, self.profile.train.grad_clip
        if clip <= 0 and not guard.skips:  # the common case: no parameter walk at all
            return guard.check(loss, None)
        params = [q for q in self.parts.trainable_params() if q.grad is not None]
        grads = [q.grad for q in params]
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = guard.grad_norm(grads) if guard.skips else None
        finite = guard.check(loss, norm)
        guard.drop_if_bad(st.optimizer, grads, finite)
        return finite

    def _read_window(self, window: RunningSums, step: int) -> None:
        """The metric read: one host sync for the window's metrics and the non-finite count."""
        st = self.st
        loss, score, (bad, *rest) = window.read(
            self.dist.max(st.guard.bad), *self.obj.window_tensors(), reduce=self.dist.sum
        )
        self._settle(bad)
        mem, peak = st.gpu_memory()
        reading = MetricsUpdated(
            epoch=st.epoch + 1,
            step=step,
            global_step=st.global_step,
            train_loss=loss,
            train_score=score,
            lrs=st.current_lrs(),
            samples_per_s=window.samples * self.dist.world / max(window.seconds(), 1e-9),
            elapsed_s=st.elapsed(),
            gpu_mem_gb=mem,
            gpu_peak_gb=peak,
            gpu_max_gb=self._largest_gpu_memory(mem),
            extra=self.obj.window_extra(rest),
            step_split=self.clock.split(),  # after the read's host sync: the CUDA events are done
        )
        with self.sink.together():  # no system sample between the reading and its layer measures
            self.emit(reading)
            self.emit(st.layers_changed(with_grad=True))
        compile_watch.report(self.compiles, self.emit, st.epoch + 1, st.global_step)
        window.reset()

    def _largest_gpu_memory(self, mem: float | None) -> float | None:
        """Several ranks on CUDA: the largest memory allocated on any rank, read with the metrics."""
        if not self.dist.active or mem is None:
            return None
        return float(self.dist.max(torch.tensor([mem], device=self.parts.device)).item())

    def _settle(self, bad: float) -> None:
        """Act on the non-finite steps just read: stop (raises `RunAborted`) or warn about skipped ones."""
        st = self.st
        warning = st.guard.settle(
            int(bad), epoch=st.epoch + 1, global_step=st.global_step, checkpoint_note=self.checkpoints.note()
        )
        if warning:
            self.emit(Warned(message=warning, epoch=st.epoch + 1, global_step=st.global_step, kind="nonfinite"))

    def evaluate(self, loader: Any) -> dict[str, Any]:
        """Loss, the task's score and per-class accuracy over a loader (see `Objective.evaluate`); the val set
        from the feature cache while it is in use."""
        sharded = self.dist.active and loader is self.parts.val_loader  # the test set: rank 0 alone
        if self.cache.active and loader is self.parts.val_loader:
            result = self.obj.evaluate(
                self.cache.top, self.cache.val_batches(), self.parts, thumbs=False, sharded=sharded
            )
        else:
            result = self.obj.evaluate(self.parts.model, loader, self.parts, sharded=sharded)
        strategy.train_mode(self.parts.model, self.profile.strategy)
        return result

    def _end_epoch(self, train: dict[str, float], val: dict[str, Any], epoch_s: float) -> None:
        st = self.st
        st.epoch += 1
        metrics = {
            "train_loss": train["loss"],
            "train_score": train["score"],
            "val_loss": val["loss"],
            "val_score": val["score"],
        }
        more = self.obj.epoch_extras(val, self.parts)
        strategy.train_mode(self.parts.model, self.profile.strategy)
        is_best = st.record_epoch(metrics, val["per_class"], epoch_s, more, val.get("report"))
        self.val_views = {k: val[k] for k in ("confusion", "misclassified") if k in val}
        self.val_views["from_cache"] = self.cache.active  # no images then: `_finish` draws the thumbnails
        st.schedule.epoch_end(val["loss"])
        self.emit(
            EpochEnded(
                epoch=st.epoch,
                global_step=st.global_step,
                phase=st.phase,
                **metrics,
                elapsed_s=st.elapsed(),
                epoch_s=epoch_s,
                samples_per_s=train["samples"] / max(epoch_s, 1e-9),
                is_best=is_best,
                extra=more,
            )
        )
        for event in self.obj.epoch_events(st.epoch, st.global_step):  # a language model's samples
            self.emit(event)
        self.emit(st.layers_changed(with_grad=True, with_drift=True))
        compile_watch.report(self.compiles, self.emit, st.epoch, st.global_step)
        self.controller.measure_shift("epoch")
        best_file = None
        if is_best:
            saved = self.checkpoints.save("best", ema=self.profile.train.ema_for_best)
            best_file = saved if saved is not None and not self.profile.train.ema_for_best else None
        if len(self.parts.phases) > 1:  # the phase's best weights, for restore_best_phase and RollBackPhase
            self.phase_best.after_epoch({**more, **metrics}, best_file)
        if self.controller.stop_status is not None:  # stopped by the user in this epoch: `_finish` saves `last`
            return
        self.checkpoints.save("last")
        if st.early_stop_reason():
            self.controller.stop("stopped_early", st.early_stop_reason())
            return
        self.controller.maybe_next_phase()

    # ----------------------------------------------------------------------------------------------- finish
    def _confusion(self) -> tuple[tuple[int, ...], ...] | None:
        conf = self.val_views.get("confusion")
        return tuple(tuple(row) for row in conf) if conf is not None else None

    def _finish(self, wall_s: float) -> RunFinished:
        st, p = self.st, self.parts
        self._stop_watching()
        status, reason = self.controller.stop_status or ("finished", f"completed {st.epoch} epochs")
        self._settle(st.guard.bad.item())  # non-finite steps since the last read: never saved over `last`
        if status != "finished" or st.step_in_epoch:  # the epoch-end save already covers a clean finish
            self.checkpoints.save("last")
        if self.val_views.get("from_cache") and p.backbone.task == "image":  # the same weights, read from images
            self.cache.drop()
            with torch.random.fork_rng(devices=[]):  # after the save, and drawing nothing: resume stays exact
                val = self.evaluate(p.val_loader)
            self.val_views = {k: val[k] for k in ("confusion", "misclassified") if k in val}
        test = None
        if p.test_loader is not None and self.dist.is_main and self.checkpoints.has("best"):
            self.checkpoints.load_best_weights()
            result = self.evaluate(p.test_loader)
            test = {
                "loss": result["loss"],
                "score": result["score"],
                "per_class": result["per_class"],
                **({"macro_f1": result["extra"]["macro_f1"]} if "macro_f1" in result["extra"] else {}),
            }
        export_dir, compression = "", None
        done = status not in CUT_SHORT and self.checkpoints.has("best")
        if self.after_run is not None and self.dist.is_main and done:
            self.checkpoints.load_best_weights()
            export_dir, compression = self.after_run(
                self.run_dir, self.profile, p.backbone, p.bundle.classes, self.emit
            )
        event = RunFinished(
            status=status,
            reason=reason,
            epochs=st.epoch,
            global_step=st.global_step,
            best=st.best_summary(),
            final=st.final_metrics(),
            test=test,
            phases=st.phase_table(),
            per_class_acc=st.per_class,
            per_class_report=st.class_report,
            samples_per_s=st.samples_per_s(wall_s),
            wall_s=wall_s,
            checkpoints=self.checkpoints.paths(),
            compression=compression,
            export_dir=export_dir,
            confusion=self._confusion(),
            misclassified=tuple(self.val_views.get("misclassified", ())),
            samples=self.obj.last_samples(),
        )
        self.emit(event)
        return event
