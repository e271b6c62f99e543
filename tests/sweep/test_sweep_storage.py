"""`tuitune sweep --storage URL`: the study in an Optuna storage that workers on several machines share. SQLite
stands in for the database; two sweep folders stand in for two machines (each folder has its own lock, as each
machine would). Trials are the seconds-long tiny runs of test_sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sweep.test_sweep import ROOT, _env, write
from tuitune.cli import main
from tuitune.errors import UserError
from tuitune.sweep.storage import PLACE, check_storage, claim, place

SPACE = '"train.lr" = { log = [1e-3, 1e-1] }\npruner = "none"\n'


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("nonsense", "sweep: --storage: 'nonsense' is not a database URL (e.g. sqlite:///sweep.db,"),
        ("foo://bar", "sweep: --storage: no database kind 'foo' (e.g. sqlite:///sweep.db,"),
        ("sqlite:////no/such/folder/s.db", "sweep: --storage: cannot open sqlite:////no/such/folder/s.db: "),
    ],
)
def test_a_bad_url_is_one_line_and_makes_no_folder(tmp_path, capsys, url, line) -> None:
    path = write(tmp_path, SPACE)
    assert main(["sweep", str(path), "--headless", "--storage", url, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tuitune: error: {line}"), err
    assert not (tmp_path / "s").exists()


def test_a_password_is_never_printed(tmp_path) -> None:
    """A server URL whose driver is missing (or whose server is not there), a folder that keeps another: one line
    each, the password masked."""
    secret = "postgresql://me:s3cret@127.0.0.1:1/sweeps"
    with pytest.raises(UserError) as e:
        check_storage(secret)
    assert "s3cret" not in str(e.value) and str(e.value).startswith("sweep: --storage: ")
    claim(tmp_path / "s", secret, "tiny")
    with pytest.raises(UserError) as e:
        claim(tmp_path / "s", f"sqlite:///{tmp_path / 'a.db'}", "tiny")
    assert "s3cret" not in str(e.value) and "postgresql://me:***@127.0.0.1:1/sweeps" in str(e.value)


def test_a_folder_keeps_its_one_storage(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    claim(tmp_path / "s", url, "tiny")
    assert place(tmp_path / "s").storage == url and oct((tmp_path / "s" / PLACE).stat().st_mode & 0o777) == "0o600"
    claim(tmp_path / "s", url, "tiny")  # the same again: resuming
    with pytest.raises(UserError, match=r"holds the sweep of study 'tiny' in sqlite:///.*a.db; give that, or another"):
        claim(tmp_path / "s", f"sqlite:///{tmp_path / 'b.db'}", "tiny")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "journal.log").write_text("")
    with pytest.raises(UserError, match=r"holds a sweep in its own journal.log; give another --out"):
        claim(tmp_path / "j", url, "tiny")


def test_a_trial_asked_past_the_cap_on_another_machine_is_given_back(tmp_path, monkeypatch) -> None:
    """Two machines count 0 of a cap of 1 at the same moment and both ask: the storage numbers their trials in
    order, so the later one is given back (neither counted nor shown) and its worker stops."""
    from tuitune.sweep import study as study_mod
    from tuitune.sweep.board import read_board
    from tuitune.sweep.space import parse_sweep

    spec, _ = parse_sweep(
        {"model": {"name": "resnet18"}, "data": {"kind": "synthetic"}, "sweep": {"train.lr": [0.001, 0.1]}}, "t", None
    )
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    here, there = tmp_path / "here", tmp_path / "there"
    for d in (here, there):
        claim(d, url, "tiny")
    a, storage_a = study_mod.open_study(here, spec, 0)
    b, storage_b = study_mod.open_study(there, spec, 0)
    first = study_mod.ask(a, storage_a, 1, here)
    monkeypatch.setattr(study_mod, "counted", lambda s: 0)  # what `there` counted before `here` asked
    assert first is not None and study_mod.ask(b, storage_b, 1, there) is None
    trials = b.get_trials(deepcopy=False)
    assert [(t.number, t.state.name, bool(t.user_attrs.get("surplus"))) for t in trials] == [
        (0, "RUNNING", False),
        (1, "FAIL", True),
    ]
    assert [r.number for r in read_board(there)[0]] == [0]


def test_two_processes_share_one_sqlite_study_and_its_cap(tmp_path, capsys) -> None:
    """A worker in another process (another `--out`: another machine) and this one, on one SQLite study, 3 trials
    in all: together they run exactly 3, each trial once, and the folder that ends last names the study's winner."""
    path = write(tmp_path, SPACE, epochs=1)
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    other, mine = tmp_path / "machine-b", tmp_path / "machine-a"
    cmd = [sys.executable, "-m", "tuitune", "sweep", str(path), "--headless", "--storage", url, "--out", str(other)]
    proc = subprocess.Popen(
        [*cmd, "--trials", "3"], env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert main(["sweep", str(path), "--headless", "--storage", url, "--out", str(mine), "--trials", "3"]) == 0
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == 0, out
    import optuna

    trials = optuna.load_study(study_name="tiny", storage=url).get_trials(deepcopy=False)
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 3  # the cap holds across the two
    by_folder = {
        d: sorted(t.number for t in counted if Path(t.user_attrs["run_dir"]).parent == d) for d in (mine, other)
    }
    assert sorted(by_folder[mine] + by_folder[other]) == [t.number for t in counted]
    for d in (mine, other):
        assert sorted(p.name for p in d.glob("trial-*")) == [f"trial-{n:03d}" for n in by_folder[d]]
        assert json.loads((d / PLACE).read_text()) == {"storage": url, "study": "tiny"}
    # each machine writes the study's winner when it ends: the one that ended last, the final one
    last = max((mine, other), key=lambda d: (d / "best.toml").stat().st_mtime_ns)
    best = optuna.load_study(study_name="tiny", storage=url).best_trial
    assert (
        (last / "best.toml").read_text().splitlines()[0].endswith(f": trial {best.number}, val_score {best.value:.6g}")
    )
    with capsys.disabled():
        print(f"\ntrials by process: this one {by_folder[mine]}, the other {by_folder[other]}; total {len(counted)}")


def test_workers_racing_to_create_the_tables_of_an_empty_database_both_open_it(tmp_path, monkeypatch) -> None:
    """The one that loses the race (a unique constraint on Optuna's schema version) tries again and opens it; a
    database that cannot be opened at all is said at once, not after the tries."""
    import optuna
    from sqlalchemy.exc import IntegrityError

    from tuitune.sweep import storage

    real, calls, lost = optuna.storages.RDBStorage, [], []

    def first_loses(url: str):
        calls.append(url)
        if not lost:
            lost.append(url)
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(url)

    monkeypatch.setattr(optuna.storages, "RDBStorage", first_loses)
    monkeypatch.setattr(storage, "OPEN_WAIT_S", 0.0)
    check_storage(f"sqlite:///{tmp_path / 'raced.db'}")
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(UserError, match="cannot open"):
        check_storage("sqlite:////no/such/folder/s.db")
    assert len(calls) == 1
