"""What a run leaves behind: run directory, events.jsonl, metrics, checkpoints; the session around a run."""
