"""Profile discovery for the picker: find `*.toml` files, load each, keep the error of a broken one.

Plain Python (no Textual, no torch), so it is cheap at start-up and unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuitune.config import RunProfile, load_profile
from tuitune.errors import UserError
from tuitune.profiles import PACKAGE_PROFILES


@dataclass(frozen=True)
class ProfileEntry:
    path: Path
    source: str  # the folder it came from, as shown to the user
    profile: RunProfile | None
    error: str = ""

    @property
    def name(self) -> str:
        return self.profile.name if self.profile is not None else self.path.stem

    @property
    def ok(self) -> bool:
        return self.profile is not None


def unique_dirs(dirs: list[Path]) -> list[Path]:
    """Existing folders, in order, each once (by resolved path)."""
    seen: set[Path] = set()
    out: list[Path] = []
    for d in dirs:
        try:
            resolved = Path(d).expanduser().resolve()
        except OSError:
            continue
        if resolved in seen or not resolved.is_dir():
            continue
        seen.add(resolved)
        out.append(Path(d))
    return out


def _shown(folder: Path) -> str:
    """How a folder is named in the list: `built-in`, relative to the working folder, or under `~`."""
    resolved = folder.resolve()
    if resolved == PACKAGE_PROFILES:
        return "built-in"
    for base, prefix in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        try:
            return prefix + str(resolved.relative_to(base)) if resolved != base else prefix or "."
        except ValueError:
            continue
    return str(folder)


def load_entry(path: Path, source: str, overrides: list[str]) -> ProfileEntry:
    try:
        return ProfileEntry(path, source, load_profile(path, overrides))
    except UserError as e:
        return ProfileEntry(path, source, None, " ".join(str(e).split()))
    except Exception as e:  # a picker never crashes on a profile
        return ProfileEntry(path, source, None, f"{path}: {type(e).__name__}: {' '.join(str(e).split())}")


def discover(dirs: list[Path], overrides: list[str] | None = None) -> list[ProfileEntry]:
    """Every `*.toml` in the given folders (sorted by name within each), loaded with `overrides` applied."""
    entries: list[ProfileEntry] = []
    seen: set[Path] = set()
    for folder in unique_dirs(dirs):
        source = _shown(folder)
        for path in sorted(folder.glob("*.toml")):
            resolved = path.resolve()  # `profiles/demo.toml -> tuitune/profiles/demo.toml` is listed once
            if resolved not in seen:
                seen.add(resolved)
                entries.append(load_entry(path, source, list(overrides or [])))
    return entries


def detail_rows(profile: RunProfile) -> list[tuple[str, str]]:
    """(label, value) pairs for the picker's detail pane."""
    m, d, t, s, es = profile.model, profile.data, profile.train, profile.strategy, profile.early_stopping
    backbone = f"{m.source}: {m.name}" + (f" [{m.gguf_file}]" if m.gguf_file else "")
    backbone += " (pretrained)" if m.pretrained and not m.weights else ""
    if m.weights:
        backbone += f" + {Path(m.weights).name}"
    if m.img_size:
        backbone += f" @ {m.img_size}px"
    data = d.kind
    if d.kind == "synthetic":
        data += f" ({d.num_samples} samples, {d.num_classes} classes)"
    elif d.path:
        data += f" {d.path}"
    elif d.name:  # a hub dataset
        data += f" {d.name}" + (f" ({d.config})" if d.config else "")
    if d.classes:
        data += f" classes {list(d.classes)}"
    strategy = s.kind
    if s.kind == "progressive":
        strategy += f", trigger {s.trigger}, {s.groups_per_phase} group(s)/phase"
        if s.trigger == "epochs":
            strategy += f" every {s.every_epochs} ep"
        elif s.trigger == "plateau":
            strategy += f" ({s.plateau_metric}, patience {s.plateau_patience})"
    elif s.kind == "groups":
        strategy += f" {', '.join(s.groups)}"
    if s.lr_decay != 1.0:
        strategy += f", lr decay {s.lr_decay:g}"
    rows = [
        ("backbone", backbone),
        ("dataset", data),
        ("strategy", strategy),
        ("epochs", str(t.epochs)),
        ("lr", f"{t.lr:g} ({t.schedule})"),
        ("optimizer", t.optimizer),
        ("batch size", str(d.batch_size)),
        ("device", t.device),
    ]
    if es.enabled:
        rows.append(("early stop", f"{es.metric}, patience {es.patience}"))
    if m.trust_remote_code:
        rows.append(("warning", "trust_remote_code = true (runs the checkpoint's own code)"))
    return rows
