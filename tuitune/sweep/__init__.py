"""Hyperparameter sweeps on Optuna: `tuitune sweep PROFILE`.

Not part of the engine and free of Textual: each trial is an ordinary run (the session's `run_training`, headless)
in `SWEEP_DIR/trial-NNN`; this package only samples overrides, feeds each epoch's metric to Optuna's pruner and keeps
the study in a journal file in the sweep folder (or in a database, `--storage URL`, for workers on several
machines), so a killed sweep resumes and several processes share one study.
Optuna is imported inside functions only: `tuitune --help` stays fast.
"""
