"""One client's delivery state: its outbox, its position in the stream, and the catch-up that makes it gapless.

A subscriber starts *catching up*: live entries are buffered while its history is read. Ending the catch-up releases
the buffer; from then on live entries go straight to the outbox. Every stored entry passes one gate: its id must be
greater than the last id delivered (``position``), so each entry is delivered once and in order, whichever path
(history, buffer, live, repair) brings it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from .._core.schemas import HISTORY_GAP, GapReason, utc_now_iso
from .._core.streams import Position, Topic
from . import _close_codes as close
from ._outbox import Outbox, Outgoing

logger = logging.getLogger(__name__)


class Subscriber:
    """A connection's view of one topic; transport-agnostic (the sender drains ``outbox``)."""

    def __init__(
        self,
        topic: Topic,
        *,
        capacity: int,
        last_event_id: str | None = None,
        on_closing: Callable[[], None] | None = None,
    ) -> None:
        self.topic = topic
        self.outbox = Outbox(capacity, on_closing)
        self.position = Position(last_event_id)
        self.catching_up = True
        self.rerun = False
        """Set when another catch-up round is needed (the live connection was lost meanwhile)."""
        self._buffer: deque[Outgoing] | None = None
        """Live entries that arrived during the catch-up (created on the first one)."""
        self._buffer_overflowed = False
        self._gap: tuple[GapReason, str | None] | None = None

    @property
    def closed(self) -> bool:
        return self.outbox.close_code is not None

    # -- live path: called by the hub, never awaits ---------------------------------------------------------------

    def offer_live(self, item: Outgoing) -> None:
        """Deliver a live entry, or buffer it while catching up; close the connection if its outbox overflows."""
        if self.outbox.close_code is not None:
            return
        if self.catching_up and item.key is not None:
            if self._buffer_overflowed:
                return  # the next round reads it from the stream
            buffer = self._buffer
            if buffer is None:
                buffer = self._buffer = deque()
            if len(buffer) < self.outbox.capacity:
                buffer.append(item)
            elif self.outbox.full:
                self._too_slow()
            else:  # history is slow to read, not the client slow to take: drop the buffer, read it all again
                self._buffer = None
                self._buffer_overflowed = True
            return
        if self._admit(item):
            self._send_nowait(item)

    def note_gap(self, reason: GapReason) -> None:
        """Tell the client about a gap before the next entry it receives (or when the catch-up ends)."""
        if self._gap is None or reason is GapReason.REDIS_RESTARTED:
            self._gap = (reason, self.position.last_id)

    def rewind(self, reason: GapReason) -> None:
        """Forget a position the stream never issued: a gap message, then the stream from its start (next read)."""
        self._gap = (reason, self.position.last_id)
        self.position.forget()

    def begin_catch_up(self) -> None:
        """Buffer live entries again and ask for another catch-up round (after the live connection was lost)."""
        self.catching_up = True
        self.rerun = True

    # -- catch-up path: called by the hub's catch-up task, may wait for room -------------------------------------

    async def deliver_history(self, item: Outgoing) -> bool:
        """Queue a history entry, waiting for room; ``False`` when the connection has ended."""
        if self.closed:
            return False
        if self._admit(item):
            if self._gap is not None and not await self.outbox.put(self._gap_message(item.entry_id)):
                return False
            if not await self.outbox.put(item):
                return False
            if item.terminal:
                self.outbox.close(*close.COMPLETED)
        return not self.closed

    async def end_catch_up(self) -> bool:
        """Release the buffered live entries and go live; ``False`` when another round must read the history again."""
        while not self.closed:
            if self._buffer_overflowed or self.rerun:
                self._buffer = None
                self._buffer_overflowed = False
                self.rerun = False
                return False
            if self._buffer:
                if not await self.deliver_history(self._buffer.popleft()):
                    break
            elif self._gap is not None:
                if not await self.outbox.put(self._gap_message(None)):
                    break
            else:
                self.catching_up = False  # no await since the buffer was found empty: nothing can slip in between
                self._buffer = None
                return True
        return True

    # -- internals ------------------------------------------------------------------------------------------------

    def _admit(self, item: Outgoing) -> bool:
        """The exactly-once gate: stored entries must be newer than the last one delivered."""
        entry_id, key = item.entry_id, item.key
        if entry_id is None or key is None:
            return True
        if not self.position.admits(key):
            return False
        self.position.advance(entry_id, key)
        return True

    def _send_nowait(self, item: Outgoing) -> None:
        if self._gap is not None and not self.outbox.offer(self._gap_message(item.entry_id)):
            self._too_slow()
            return
        if not self.outbox.offer(item):
            self._too_slow()
        elif item.terminal:
            self.outbox.close(*close.COMPLETED)

    def _gap_message(self, resumes_at: str | None) -> Outgoing:
        assert self._gap is not None
        reason, after_id = self._gap
        self._gap = None
        data = {"reason": reason.value, "after_id": after_id, "resumes_at": resumes_at}
        return Outgoing.unstored({"type": HISTORY_GAP, "timestamp": utc_now_iso(), "data": data})

    def _too_slow(self) -> None:
        logger.info("Closing a %s subscriber of %s: its queue overflowed", self.topic.kind, self.topic.name)
        self.outbox.abort(*close.TOO_SLOW)
