"""The backbone: timm or Hugging Face model + task head, split into ordered layer groups."""
