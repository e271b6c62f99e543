"""Hardening: non-finite losses, out of memory, crashes, resume equality and security rules.

(Interrupts and kill -9 run real processes: tests/engine/test_interrupts.py. Bad input: test_bad_input.py.)
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import of_type, tiny_profile
from tuitune.cli import main
from tuitune.config import dump_toml, profile_to_dict
from tuitune.engine.commands import Control
from tuitune.engine.events import (
    CheckpointSaved,
    EpochEnded,
    MetricsUpdated,
    PhaseChanged,
    RunFailed,
    RunFinished,
    RunStarted,
    Warned,
)
from tuitune.engine.record import checkpoint
from tuitune.engine.record.runlog import RunRecorder, read_events
from tuitune.engine.session import run_training
from tuitune.engine.train.guards import NonFiniteGuard
from tuitune.engine.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]
STEPS = 5  # tiny_profile: 72 training examples / batch 16


def inject(monkeypatch: pytest.MonkeyPatch, at: set[int], effect) -> list[int]:
    """Patch the training loss so that training steps in `at` (counted from 1 over the run) go wrong: `effect`
    returns the loss to use, or raises. Evaluation (no grad) is untouched."""
    real = torch.nn.functional.cross_entropy
    calls: list[int] = []

    def cross_entropy(logits, y, *args, **kwargs):
        loss = real(logits, y, *args, **kwargs)
        if not torch.is_grad_enabled() or _planning():
            return loss
        calls.append(1)
        return effect(loss) if len(calls) in at else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    return calls


def _planning() -> bool:
    """The memory plan's measuring forward (one per phase, before the first step) is no training step."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(("memory_measure.py", "memory_run.py")):
            return True
        frame = frame.f_back
    return False


def nan_loss(loss: torch.Tensor) -> torch.Tensor:
    return loss * float("nan")


def last_state(run_dir: Path) -> dict:
    return checkpoint.open_checkpoint(run_dir / "checkpoints", "last")[1]


def all_finite_file(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point())


# ------------------------------------------------------------------------------------------- non-finite loss


def test_nonfinite_stop_keeps_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    """A NaN at step 8 (epoch 2 step 3; it poisons step 9 too): found at the next metric read (step 9, epoch 2
    step 4), the run stops, and `last` is still epoch 1's."""
    inject(monkeypatch, {8}, nan_loss)
    events: list = []
    final = run_training(
        tiny_profile(train={"epochs": 3, "log_every": 2}), tmp_path, events.append, Control(), interactive=False
    )
    assert isinstance(final, RunFailed) and final.kind == "nonfinite" and not final.bad_input
    assert "non-finite loss in 2 step(s) by step 9 (epoch 2)" in final.message and "\n" not in final.message
    assert "epoch 1) is intact" in final.message and "train.on_nonfinite" in final.message
    assert [e.epoch for e in of_type(events, CheckpointSaved)] == [1, 1]  # best and last of epoch 1, nothing since
    assert final.global_step == 9 and max(m.global_step for m in of_type(events, MetricsUpdated)) == 7
    assert last_state(tmp_path)["epoch"] == 1 and all_finite_file(tmp_path / "checkpoints" / "last.safetensors")
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_nonfinite_skip_drops_the_steps_and_goes_on(tmp_path, monkeypatch) -> None:
    inject(monkeypatch, {3, 7}, nan_loss)
    events: list = []
    profile = tiny_profile(train={"epochs": 2, "log_every": 2, "on_nonfinite": "skip", "max_skipped": 2})
    trainer = Trainer(profile, tmp_path, events.append, Control())
    final = trainer.run()
    assert final.status == "finished"
    warnings = [w for w in of_type(events, Warned) if w.kind == "nonfinite"]
    assert [w.global_step for w in warnings] == [4, 7]  # each seen at the next metric read (epoch 1 step 4, 2 step 2)
    assert "skipped 1 step(s)" in warnings[0].message and "2 of at most train.max_skipped = 2" in warnings[1].message
    assert all(torch.isfinite(p).all() for p in trainer.parts.model.parameters())
    assert all(e.train_loss == e.train_loss for e in of_type(events, EpochEnded))  # finite: NaN steps not counted
    assert last_state(tmp_path)["skipped_steps"] == 2


def test_nonfinite_skip_stops_over_the_limit(tmp_path, monkeypatch) -> None:
    inject(monkeypatch, {2, 3, 4}, lambda loss: loss * float("inf"))
    final = run_training(
        tiny_profile(train={"epochs": 2, "log_every": 2, "on_nonfinite": "skip", "max_skipped": 1}),
        tmp_path,
        lambda e: None,
        Control(),
        interactive=False,
    )
    assert isinstance(final, RunFailed) and final.kind == "nonfinite"
    assert "in 3 steps by step 4 (epoch 1), more than train.max_skipped = 1" in final.message
    assert "no checkpoint was saved yet" in final.message
    assert not (tmp_path / "checkpoints" / "last.safetensors").exists()


def test_a_poisoned_model_is_never_saved(tmp_path) -> None:
    events: list = []
    trainer = Trainer(tiny_profile(), tmp_path, events.append, Control())
    assert trainer.checkpoints.save("last") is not None
    before = (tmp_path / "checkpoints" / "last.safetensors").read_bytes()
    with torch.no_grad():
        next(trainer.parts.model.parameters())[0].fill_(float("nan"))
    assert trainer.checkpoints.save("last") is None
    assert (tmp_path / "checkpoints" / "last.safetensors").read_bytes() == before
    assert "not saving the last checkpoint" in of_type(events, Warned)[-1].message


def test_fused_optimizers_skip_the_update_outright() -> None:
    """GradScaler's found_inf protocol: a fused AdamW leaves weights and state untouched on a non-finite step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    guard = NonFiniteGuard("skip", 10, torch.device("cpu"))

    def step(x: torch.Tensor) -> None:
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        guard.drop_if_bad(opt, grads, guard.check(loss, guard.grad_norm(grads)))
        opt.step()
        guard.after_step(opt)

    step(torch.ones(3, 4))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    step(torch.full((3, 4), float("nan")))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, opt.state.values()))
    assert [float(s["step"]) for s in opt.state.values()] == [1.0, 1.0] and int(guard.bad) == 1


def test_no_host_sync_per_step(tmp_path, monkeypatch) -> None:
    """Host syncs made by tuitune's code in a training epoch do not grow with its steps (checked: item, tolist,
    bool, float, int called from tuitune/; torch's own `.item()` on the optimizers' CPU step counters is no
    device sync and is not counted)."""
    import sys

    counts = {"n": 0}
    package = str(ROOT / "tuitune")
    cases = [(steps, mode, clip) for mode, clip in (("stop", 0.0), ("skip", 0.0), ("skip", 1.0)) for steps in (2, 5)]
    trainers = {}
    for steps, mode, clip in cases:  # built before counting: model set-up is not the loop, and slow when patched
        profile = tiny_profile(
            train={
                "epochs": 1,
                "log_every": 1000,
                "max_steps_per_epoch": steps,
                "on_nonfinite": mode,
                "grad_clip": clip,
            }
        )
        trainers[steps, mode, clip] = Trainer(profile, tmp_path / f"{steps}{mode}{clip}", lambda e: None, Control())
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            if sys._getframe(1).f_code.co_filename.startswith(package):
                counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def syncs(steps: int, mode: str, clip: float) -> int:
        counts["n"] = 0
        trainers[steps, mode, clip]._train_epoch()
        return counts["n"]

    for mode, clip in (("stop", 0.0), ("skip", 0.0), ("skip", 1.0)):
        assert syncs(2, mode, clip) == syncs(5, mode, clip), (mode, clip)


# ----------------------------------------------------------------------------------------- OOM and crashes


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
    ids=["OutOfMemoryError", "RuntimeError"],
)
def test_out_of_memory_stops_cleanly_with_advice(tmp_path, monkeypatch, capsys, error: Exception) -> None:
    """OOM at step 3 of epoch 2: exit 1, one line of advice, checkpoints of epoch 1 intact, traceback logged."""

    def boom(loss):
        raise error

    inject(monkeypatch, {STEPS + 3}, boom)
    profile = tmp_path / "p.toml"
    profile.write_text(dump_toml(profile_to_dict(tiny_profile(train={"epochs": 3}))))
    code = main(["train", str(profile), "--headless", "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(
        "tuitune: error: out of memory at epoch 2, step 3: lower data.batch_size (now 16; "
        "e.g. --set data.batch_size=8), model.img_size"
    )
    assert f"continue with: tuitune train --resume {tmp_path / 'run'} --set data.batch_size=8" in lines[0]
    assert "(traceback: " in lines[0] and "out of memory" in (tmp_path / "run" / "error.log").read_text()
    assert last_state(tmp_path / "run")["epoch"] == 1
    failed = read_events(tmp_path / "run")[-1]
    assert isinstance(failed, RunFailed) and failed.kind == "oom" and failed.epoch == 1


def test_any_exception_becomes_one_line_and_a_log(tmp_path, monkeypatch, capsys) -> None:
    def boom(loss):
        raise ValueError("shapes went sideways\nsecond line of detail")

    inject(monkeypatch, {3}, boom)
    profile = tmp_path / "p.toml"
    profile.write_text(dump_toml(profile_to_dict(tiny_profile())))
    code = main(["train", str(profile), "--headless", "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    log = tmp_path / "run" / "error.log"
    assert code == 1 and lines == [f"tuitune: error: ValueError: shapes went sideways (traceback: {log})"]
    assert "Traceback (most recent call last)" in log.read_text() and "second line of detail" in log.read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------------------------- resume


def _val(events: list) -> list[tuple[int, float, float, float]]:
    return [(e.epoch, e.val_loss, e.val_score, e.train_loss) for e in events if isinstance(e, EpochEnded)]


@pytest.mark.parametrize(
    "stop_at, augment",
    [("epoch_end", {}), ("mid_epoch", {}), ("mid_epoch", {"mixup": 0.4, "cutmix": 1.0})],
    ids=["epoch_end", "mid_epoch", "mid_epoch-mixup"],
)
def test_resume_equals_an_unbroken_run(tmp_path, stop_at: str, augment: dict) -> None:
    """4 epochs with an unfreeze at epoch 2, against 2 epochs (or 1.4) + interrupt + `tuitune train --resume`.
    Dropout makes the RNG matter, cosine + warm-up the scheduler, AdamW the optimizer state; with mixup/CutMix,
    timm's `Mixup` draws from numpy's global RNG, which must be seeded and checkpointed too."""
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 2},
        train={"epochs": 4, "schedule": "cosine", "warmup_steps": 3},
        model={"kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8, "drop_rate": 0.3}},
        augment=augment,
    )
    straight: list = []
    run_training(profile, tmp_path / "a", straight.append, Control(), interactive=False)

    control, first = Control(), []

    def interrupt(event) -> None:  # what Ctrl+C does: request a stop, taken at the next step boundary
        first.append(event)
        if stop_at == "epoch_end" and isinstance(event, EpochEnded) and event.epoch == 2:
            control.request_stop()
        if stop_at == "mid_epoch" and isinstance(event, MetricsUpdated) and event.global_step == STEPS + 2:
            control.request_stop()

    run_training(profile, tmp_path / "b", interrupt, control, interactive=False)
    assert isinstance(first[-1], RunFinished) and first[-1].status == "interrupted"
    saved = last_state(tmp_path / "b")
    where = (saved["epoch"], saved["step_in_epoch"], saved["phase"])
    assert where == ((2, 0, 1) if stop_at == "epoch_end" else (1, 2, 0))
    assert main(["train", "--resume", str(tmp_path / "b"), "--headless"]) == 0
    resumed = read_events(tmp_path / "b")
    start = [e for e in resumed if isinstance(e, RunStarted)][-1]
    assert (start.start_epoch, start.phase) == (saved["epoch"], saved["phase"])
    assert start.start_step == saved["global_step"] and start.start_elapsed_s >= saved["wall_s"]  # for the ETA
    a, b = _val(straight), _val(resumed)
    print(
        f"\nresume equality ({stop_at}: interrupted with {saved['epoch']} epochs done + {saved['step_in_epoch']} "
        f"steps, in phase {saved['phase'] + 1}; resumed with tuitune train --resume)"
    )
    print("epoch  val_loss straight   val_loss resumed   |diff|    val_score s/r    train_loss s/r")
    for (ea, la, aa, ta), (_eb, lb, ab, tb) in zip(a, b):
        print(f"{ea:>5}  {la:.10f}       {lb:.10f}       {abs(la - lb):.1e}   {aa:.4f}/{ab:.4f}  {ta:.6f}/{tb:.6f}")
    assert [x[0] for x in b] == [1, 2, 3, 4]
    for (ea, la, aa, ta), (eb, lb, ab, tb) in zip(a, b):
        assert ea == eb and abs(la - lb) <= 1e-6 and abs(aa - ab) <= 1e-6 and abs(ta - tb) <= 1e-6
    assert (
        [e.epoch for e in of_type(straight, PhaseChanged)]
        == [e.epoch for e in of_type(resumed, PhaseChanged) if e.reason != "resume"]
        == [2]
    )
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "last.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_resume_restores_the_trainable_mask_optimizer_and_rng(tmp_path) -> None:
    profile = tiny_profile(
        strategy={"kind": "progressive", "trigger": "epochs", "every_epochs": 1}, train={"epochs": 3}
    )
    control = Control()

    def stop(event) -> None:
        if isinstance(event, EpochEnded) and event.epoch == 2:
            control.request_stop()

    first = Trainer(profile, tmp_path, stop, control)
    first.run()
    rng = torch.get_rng_state()
    second = Trainer(profile, tmp_path / "other", lambda e: None, Control(), resume=tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)
    mask = {n: p.requires_grad for n, p in first.parts.model.named_parameters()}
    assert mask == {n: p.requires_grad for n, p in second.parts.model.named_parameters()}
    assert second.st.phase == first.st.phase == 2 and second.st.global_step == first.st.global_step

    def groups(trainer: Trainer) -> list:
        return sorted(
            (g["layer_group"], g["lr"], g["base_lr"], tuple(g["param_names"]))
            for g in trainer.st.optimizer.param_groups
        )

    assert groups(first) == groups(second)


# ------------------------------------------------------------------------------------- checkpoint integrity


def test_a_save_killed_between_its_two_renames_still_resumes(tmp_path, monkeypatch) -> None:
    """The weights are renamed into place, then the process dies before the state is: the state's own weights
    are found (kept under their id) and put back."""
    model = torch.nn.Linear(3, 3)
    torch.nn.init.constant_(model.weight, 1.0)
    checkpoint.save_checkpoint(tmp_path, "last", model, {"version": 1})
    torch.nn.init.constant_(model.weight, 2.0)
    real = checkpoint.atomic_write

    def dies_on_state(path, write):
        if path.name.endswith(".state.pt"):
            raise KeyboardInterrupt  # the second Ctrl+C, between the two renames
        real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", dies_on_state)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, "last", model, {"version": 2})
    monkeypatch.undo()
    assert float(load_file(str(tmp_path / "last.safetensors"))["weight"][0, 0]) == 2.0  # new weights, old state
    weights, state = checkpoint.open_checkpoint(tmp_path, "last")
    assert state["version"] == 1 and float(load_file(str(weights))["weight"][0, 0]) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "last.state.pt"]


def test_a_torn_event_line_is_cut_before_a_resume_appends(tmp_path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"type":"Warned","message":"a"}\n{"type":"Warn')
    recorder = RunRecorder(tmp_path, append=True)
    recorder(Warned(message="b"))
    recorder.close()
    assert [e.message for e in read_events(tmp_path)] == ["a", "b"]


# ------------------------------------------------------------------------------------------------ security


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    out = []
    for path in (ROOT / "tuitune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                out.append((path, node))
    return out


def test_every_torch_load_is_weights_only() -> None:
    calls = _calls("torch.load")
    assert calls, "expected torch.load calls to check"
    for path, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        ok = isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True
        assert ok, f"{path}:{call.lineno}: torch.load without weights_only=True"


def test_nothing_in_the_package_executes_or_unpickles_data() -> None:
    for name in ("eval", "exec", "pickle.load", "pickle.loads", "compile", "__import__"):
        assert not _calls(name), [f"{p}:{c.lineno}" for p, c in _calls(name)]
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tuitune").rglob("*.py"))
    assert not re.search(r"trust_remote_code\s*=\s*True", source)  # only ever the profile's own value


def test_trust_remote_code_is_off_unless_set_and_then_warned(tmp_path) -> None:
    assert tiny_profile().model.trust_remote_code is False
    events: list = []
    Trainer(
        tiny_profile(model={"trust_remote_code": True}, train={"epochs": 1, "max_steps_per_epoch": 1}),
        tmp_path,
        events.append,
        Control(),
    ).run()
    assert any("trust_remote_code is on" in w for w in events[0].warnings)
    quiet: list = []
    Trainer(tiny_profile(train={"epochs": 1, "max_steps_per_epoch": 1}), tmp_path / "q", quiet.append, Control()).run()
    assert quiet[0].warnings == ()


def test_an_existing_run_is_never_overwritten_without_force(tmp_path, capsys) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(dump_toml(profile_to_dict(tiny_profile(train={"epochs": 1, "max_steps_per_epoch": 1}))))
    out = ["--headless", "--out", str(tmp_path / "run")]
    assert main(["train", str(profile), *out]) == 0
    before = (tmp_path / "run" / "checkpoints" / "last.safetensors").read_bytes()
    assert main(["train", str(profile), *out]) == 2
    assert "a run already exists here" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").read_bytes() == before
    assert main(["train", str(profile), *out, "--force"]) == 0
