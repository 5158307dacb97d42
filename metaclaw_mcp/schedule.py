"""When training steps may run: a daily window of local time, and a quiet period since the last request.

A window is "HH:MM-HH:MM" in the server's local time; one whose end is before its start runs past
midnight ("22:00-06:00"), and equal ends mean the whole day. Pure functions, no I/O.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta

_WINDOW = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


def parse_window(text: str) -> tuple[int, int]:
    """(start, end) in minutes after midnight from "HH:MM-HH:MM"; ValueError naming the expected form."""
    m = _WINDOW.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a window of local time like '01:00-06:00' (HH:MM-HH:MM, 24-hour)")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    return h1 * 60 + m1, h2 * 60 + m2


def in_window(now: datetime, window: tuple[int, int]) -> bool:
    """Whether the local time `now` falls in `window` (start included, end excluded)."""
    start, end = window
    minute = now.hour * 60 + now.minute
    if start == end:
        return True
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def next_opening(now: datetime, window: tuple[int, int]) -> datetime:
    """The next time at or after `now` (to the minute) when `window` is open: `now` itself when it is open."""
    if in_window(now, window):
        return now
    opening = now.replace(hour=window[0] // 60, minute=window[0] % 60, second=0, microsecond=0)
    return opening if opening > now else opening + timedelta(days=1)
