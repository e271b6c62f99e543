"""Run directories read back, without talking to a run process: which process owns a run and whether it still
lives (`process`), each run's status and progress as one row (`status`: `tuitune runs`, `tuitune attach`, the
picker), and runs compared (`compare`: `tuitune compare`, the compare screen).

The record side of `tuitune.remote`: the live side (the run process, its control socket, the clients that attach)
writes `process.json` through `process` and reads nothing else here but the socket's path and the run's status.
Plain Python: no socket client, no torch, no Textual (import-linter contracts in pyproject.toml).
"""
