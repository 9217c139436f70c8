"""What a publisher's close reports: whether every event handed to it reached Redis, and what
to do with those that may not have (:class:`CloseReport`)."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import KernelEvent

__all__ = ["CloseReport"]


@dataclass(frozen=True, slots=True)
class CloseReport:
    """What ``close``/``aclose`` returns: did every event handed to the publisher reach
    Redis (:attr:`ok`), and if not, which.

    What to do with what was not confirmed, in this order (``in_doubt`` precede
    ``undelivered`` in sequence):

    * :attr:`in_doubt`: once Redis answers again, pass the report to
      :func:`~publisher.resolve_in_doubt` (or ``aresolve_in_doubt``): it returns those that
      are not in Redis, and makes sure a write still pending somewhere never lands. Publish
      those again. Do not publish ``in_doubt`` again without it: some or all of them may be
      in history, and a new publisher does not deduplicate (each publisher numbers its
      events under its own sequence key).
    * :attr:`undelivered`: certainly not written, and never will be by this publisher;
      publish them again (after the resolved ``in_doubt`` ones, to keep the order).
    """

    published: int
    #: events certainly not in Redis, in order: still queued at the close deadline and never
    #: sent (or sent only on a connection that failed to open)
    undelivered: tuple[KernelEvent, ...]
    #: events whose write was in flight at the deadline, or sent in an attempt that ended
    #: without an answer (a timeout, a dropped connection, a frozen Redis that may run it
    #: when it resumes): they may or may not be in Redis; at most ``chunk_size * 8``
    in_doubt: tuple[KernelEvent, ...]
    #: events dropped by the overflow policy, over the publisher's life (never in Redis)
    dropped: int
    #: events Redis rejected (their calls raised :class:`PublishRejected`)
    rejected: int
    last_error: str | None
    #: the publisher's sequence-number key, and the numbers of the ``in_doubt`` events: what
    #: :func:`~publisher.resolve_in_doubt` uses
    sequence_key: str = ""
    in_doubt_seqs: tuple[int, ...] = ()
    #: with several partitions, the sequence key of each ``in_doubt`` event (its
    #: partition's), whose numbers ``in_doubt_seqs`` are; empty: all ``sequence_key``
    in_doubt_keys: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.undelivered or self.in_doubt or self.dropped or self.rejected)

    def summary(self) -> str:
        if self.ok:
            return f"all {self.published} events published"
        return (
            f"{len(self.undelivered)} events undelivered, {len(self.in_doubt)} in doubt "
            f"(may have been written), {self.dropped} dropped, {self.rejected} rejected "
            f"({self.published} published); last error: {self.last_error}"
        )
