"""The one exception type for mistakes a user can make (config, data, model path, device, run folders).

The CLI prints its message as one paragraph and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """A user-caused error whose message names the field, the value and the fix."""

    exit_code = 2


def closest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' hint, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""
