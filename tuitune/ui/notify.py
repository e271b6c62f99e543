"""Tell a person who looked away: the terminal bell and a desktop notification escape.

OSC 9 (iTerm2, WezTerm, Windows Terminal, kitty, foot) and OSC 777 (urxvt, VTE terminals such as GNOME Terminal)
both show a notification where the terminal supports it; the others ignore the sequence. Inside tmux the
sequences are wrapped in tmux's passthrough (shown when `allow-passthrough` is on).
"""

from __future__ import annotations

import os
from typing import Any


def notification_escapes(title: str, body: str, *, tmux: bool = False) -> str:
    clean = lambda text: "".join(ch for ch in text if ch.isprintable() and ch != ";")[:200]  # noqa: E731
    title, body = clean(title), clean(body)
    sequences = [f"\x1b]9;{title}: {body}\x07", f"\x1b]777;notify;{title};{body}\x07"]
    if tmux:
        sequences = ["\x1bPtmux;" + seq.replace("\x1b", "\x1b\x1b") + "\x1b\\" for seq in sequences]
    return "".join(sequences)


def notify_terminal(app: Any, title: str, body: str) -> None:
    """Ring the bell and write the notification escapes to the app's terminal (nothing when headless)."""
    app.bell()
    driver = getattr(app, "_driver", None)
    if driver is None or getattr(driver, "is_headless", True):
        return
    driver.write(notification_escapes(title, body, tmux=bool(os.environ.get("TMUX"))))
    driver.flush()
