"""The training engine: plain Python + torch, no Textual. Driven by events out and commands in.

Importing this package is cheap: torch, timm and transformers load only in the modules that need them.
"""
