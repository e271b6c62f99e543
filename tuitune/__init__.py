"""tuitune: fine-tune pretrained backbones from a terminal, and steer the unfreeze schedule of a live run."""

__version__ = "0.1.0"
