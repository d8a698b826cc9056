"""Small helpers shared by the training loop, metrics and tools."""

from __future__ import annotations


def format_time(seconds: float) -> str:
    """Human-readable duration: 12s, 3m 04s, 1h 02m 03s, 2d 03h 04m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"
