"""How far a handed-off stream's replay has really gone (:class:`ReplayTrail`).

A drain records where each stream its client cannot resume stood (gateway.replica.handoff),
and the next replica resumes it from there. "Where it stood" must be a position whose every
event has left this process: a frame still queued, or in the transport's buffer, when the
drain ends is never written (a reader slower than ``drain_deadline``), and a record past it
would lose it. A replay pushes up to half the stream's cap ahead of its reader, so the trail
keeps, after each frame it pushed, the bytes pushed so far and the position just past that
frame; at the drain, the bytes not yet handed to the kernel (``Connection.unsent``) are the
tail of what was pushed, and the last position before them is the one to record.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from .frames import StreamId

__all__ = ["Mark", "ReplayTrail"]

#: a plain position, or one per partition (a spanning stream's)
Mark = StreamId | tuple[StreamId, ...]

#: bytes of marks kept behind the newest: more than a stream can have unsent (its cap, which
#: evicts, and the transport's buffer, which pauses the queue at its high-water mark)
_KEEP: Final = 4 << 20


class ReplayTrail:
    """Positions of one replay, each with the bytes pushed up to it (oldest first)."""

    __slots__ = ("_marks", "pushed")

    def __init__(self, start: Mark) -> None:
        #: bytes the replay pushed to the connection so far
        self.pushed = 0
        self._marks: deque[tuple[int, Mark]] = deque([(0, start)])

    def passed(self, mark: Mark) -> None:
        """Everything up to ``mark`` is pushed or passed over (no new bytes)."""
        if self._marks[-1][0] == self.pushed:
            self._marks[-1] = (self.pushed, mark)
        else:
            self._marks.append((self.pushed, mark))

    def pushed_frame(self, size: int, mark: Mark) -> None:
        """A frame of ``size`` bytes was pushed; ``mark`` is the position just past it."""
        self.pushed += size
        marks = self._marks
        marks.append((self.pushed, mark))
        while len(marks) > 1 and marks[1][0] < self.pushed - _KEEP:
            marks.popleft()

    def delivered(self, unsent: int) -> Mark | None:
        """The newest position whose every frame has left the process, with ``unsent``
        bytes still queued or in the transport's buffer (they are the newest pushed; bytes
        pushed by others, a notice, only make it earlier). None when older than the trail
        keeps."""
        limit = self.pushed - unsent
        if limit < self._marks[0][0]:
            return None
        found = self._marks[0][1]
        for size, mark in self._marks:
            if size > limit:
                break
            found = mark
        return found
