"""The profile key reference in `profiles/README.md`, generated from the declarations in `tuitune/config/schema.py`
and `tuitune/config/loop.py` (the training loop's sections).

    python -m tuitune.profile_docs --update profiles/README.md

A test keeps the README in step with the code.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from tuitune.config import SECTIONS, RunProfile, toml_value
from tuitune.config.declare import field_default


def docs_markdown() -> str:
    """The key reference for `profiles/README.md`, generated from the profile's declarations (`RunProfile`)."""
    lines = []
    for section, cls in [("", RunProfile), *SECTIONS.items()]:
        lines.append(f"\n### `[{section}]`\n" if section else "\n### Top level\n")
        lines.append("| key | default | meaning |\n| --- | --- | --- |")
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or f.name in SECTIONS:
                continue
            default = field_default(f)
            doc = f.metadata["doc"] + (f" One of: {', '.join(f.metadata['choices'])}." if f.metadata["choices"] else "")
            lines.append(f"| `{f.name}` | `{toml_value(default)}` | {doc} |")
    return "\n".join(lines).lstrip("\n") + "\n"


def update_readme(path: Path) -> None:
    """Replace everything from the first `### Top level` heading on with the generated reference."""
    text = path.read_text(encoding="utf-8")
    head = text.split("### Top level", 1)[0]
    path.write_text(head + docs_markdown(), encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["--update"]:
        update_readme(Path(sys.argv[2]))
    else:
        print(docs_markdown(), end="")
