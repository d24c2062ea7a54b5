"""Text that grows a piece at a time (a streamed answer), kept linear.

``str +=`` on an attribute or a dict value copies the whole string every time (the object
holds a second reference, so CPython cannot extend it in place): quadratic in the answer's
length. Flask-free; imported by every client API's renderer.
"""

from __future__ import annotations

from typing import Any


def joined(parts: list[str]) -> str:
    """The text of ``parts``, joined once and kept joined: appending to a list and joining
    when read is linear, where ``str +=`` on an attribute copies the whole text every time
    (a long answer in many small deltas took seconds and held the gevent hub meanwhile)."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


class Growing:
    """Strings that grow inside JSON-shaped dicts (a block's text, a call's arguments), kept
    as pieces until ``settle`` writes them in: ``item["text"] += piece`` copies the whole
    string every time (the dict holds a second reference), quadratic in the answer's length
    (a 1.6 MB answer in 100,000 deltas took 19 s and held the gevent hub meanwhile)."""

    def __init__(self) -> None:
        self._pieces: dict[tuple[int, Any], tuple[dict[Any, Any], Any, list[str]]] = {}

    def add(self, holder: dict[Any, Any], key: Any, piece: str) -> None:
        """``holder[key] += piece``, deferred."""
        entry = self._pieces.get((id(holder), key))
        if entry is None:
            entry = self._pieces[(id(holder), key)] = (holder, key, [])
        entry[2].append(piece)

    def settle(self) -> None:
        """Write every pending piece into its dict: call before those dicts are read."""
        for holder, key, pieces in self._pieces.values():
            if pieces:
                holder[key] += "".join(pieces)
                pieces.clear()
