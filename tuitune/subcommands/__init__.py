"""What each `tuitune` subcommand does, once `tuitune.cli` has parsed its arguments: `train` (starting runs:
train, demo, sweep), `runs` (looking at runs: runs, compare, attach, replay, the picker) and `tools` (working on a
profile or a finished run: layers, export, compress, lr-find). Import-light like the parser: torch, timm,
transformers and Textual load only inside the function that needs them."""
