"""The loop's occasional work, kept out of `loop.py` so the hot path stays readable: per-epoch extras (EMA and
source-retention scores), the LR finder command, and what happens to a finished run (export, compression)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tuitune.engine.train import strategy
from tuitune.engine.events import CompressionReported, LRFound
from tuitune.engine.model.heads import linear_head, pre_logits
from tuitune.engine.train.objective import to_device

if TYPE_CHECKING:
    from tuitune.engine.train.loop import Trainer


def epoch_extras(trainer: Trainer, val: dict[str, Any]) -> dict[str, float]:
    """val_* extras of the score (MAE, mAP), the EMA model's val metrics, and the source task's accuracy."""
    out = {f"val_{k}": v for k, v in val.get("extra", {}).items()}
    obj, p = trainer.obj, trainer.parts
    if obj.ema is not None:
        ema = obj.evaluate(obj.ema.module, p.val_loader, p)
        out.update(ema_val_loss=ema["loss"], ema_val_acc=ema["acc"])
    if p.source_loader is not None:
        out["source_acc"] = source_accuracy(trainer)
        strategy.train_mode(p.model, trainer.profile.strategy)
    return out


@torch.no_grad()
def source_accuracy(trainer: Trainer) -> float:
    """Accuracy on the pretraining task's val set, scored by the weights file's own (frozen) head on the backbone's
    current features: it falls as the backbone forgets what pretraining taught it."""
    p = trainer.parts
    if not hasattr(trainer, "_source_head"):
        trainer._source_head = linear_head(p.backbone.source_head or {}, p.device)
    p.model.eval()
    hits = total = torch.zeros((), device=p.device)
    for x, y in p.source_loader:
        x, y = to_device(x, p.device), y.to(p.device, non_blocking=True)
        with p.autocast():
            logits = trainer._source_head(pre_logits(p.model, x).float())
        hits = hits + (logits.argmax(-1) == y).sum()
        total = total + y.shape[0]
    return (hits / total.clamp(min=1)).item()


def find_lr(trainer: Trainer, steps: int) -> str:
    """Sweep the current phase's LR from a snapshot (restored afterwards), write the curve, emit `LRFound`."""
    from torch.utils.data import DataLoader

    from tuitune.engine.tools.lr_find import curve_to_csv, lr_sweep

    p, st = trainer.parts, trainer.st
    gen = torch.Generator().manual_seed(trainer.profile.train.seed + st.global_step)
    loader = DataLoader(p.bundle.train, batch_size=trainer.profile.data.batch_size, shuffle=True, generator=gen)
    current = st.head_base_lr()
    curve = lr_sweep(p.model, st.optimizer, loader, lambda out, y: trainer.obj.train_loss(out, y), p.device,
                     steps=steps, train_mode=lambda m: strategy.train_mode(m, trainer.profile.strategy),
                     autocast=p.autocast)
    st.apply_lr()  # the sweep restored the optimizer; put this step's scheduled LRs back
    path = curve_to_csv(curve, trainer.run_dir / f"lr_find_step{st.global_step}.csv")
    suggestion = curve.valley if curve.method == "valley" else curve.steep
    trainer.emit(LRFound(lrs=curve.lrs, losses=curve.smoothed, suggestion=float(suggestion or current),
                         steep=float(curve.steep or 0.0), valley=float(curve.valley or 0.0), current_lr=current,
                         path=str(path), epoch=st.epoch, global_step=st.global_step))
    return f"suggested {float(suggestion or current):.3g} (current {current:.3g}); curve in {path.name}"


def ship(trainer: Trainer) -> tuple[str, dict[str, Any] | None]:
    """After a run that ended well: export the best model; then compress it when the profile asks."""
    st, p, profile = trainer.st, trainer.parts, trainer.profile
    if trainer.stop_status is not None and trainer.stop_status[0] == "interrupted" or not st.has_checkpoint("best"):
        return "", None
    from tuitune.engine.tools.export import write_export

    st.load_best_weights()
    export = write_export(p.backbone, profile, p.bundle.classes, trainer.run_dir / "export")
    report = None
    cfg = profile.compress
    if cfg.sparsity or cfg.quantize:
        from tuitune.config import dump_toml, profile_to_dict
        from tuitune.engine.tools.compress import compress_run

        if not (trainer.run_dir / "profile.toml").exists():  # a Trainer driven without the run recorder
            (trainer.run_dir / "profile.toml").write_text(dump_toml(profile_to_dict(profile)), encoding="utf-8")
        report = compress_run(trainer.run_dir, cfg.sparsity, cfg.quantize, cfg.fine_tune_epochs)
        trainer.emit(CompressionReported(report=report))
    return export["dir"], report


__all__ = ["epoch_extras", "find_lr", "ship"]
