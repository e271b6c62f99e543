"""Run directories read back as tables: which process owns a run and whether it is alive (`status`), and runs
compared side by side (`compare`). Plain Python: no torch, no Textual, no socket client. `tuitune runs`, `compare`,
the picker, sweeps and the run process (its `process.json`) use it; `tuitune.remote` is the live side."""
