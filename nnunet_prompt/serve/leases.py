"""Leases: one interactive session per client, reaped when its user is idle or its client is gone.

The protocol's two clocks (nnInteractive's SERVER_CLIENT.md): *idle* is refreshed only by real actions
(set_image, interactions, ...), *liveness* by any request, heartbeats included, so a crashed client's slot
comes back within one liveness timeout while an open-but-unused viewer is still reclaimed at the idle timeout.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional


class LeaseGone(Exception):
    """The lease token is missing, expired or unknown (HTTP 410)."""


class AtCapacity(Exception):
    """Every session slot is taken (HTTP 503)."""


@dataclass
class Lease:
    session: Any
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request of a client at a time
    last_active: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    buffer: Optional[tuple] = None  # (shape, dtype) of the client's target buffer

    def mark_seen(self) -> None:
        self.last_seen = time.monotonic()

    def mark_active(self) -> None:
        self.last_active = self.last_seen = time.monotonic()


class LeaseRegistry:
    def __init__(self, new_session: Callable[[], Any], max_sessions: int, idle_timeout_s: float,
                 liveness_timeout_s: float):
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self._new_session = new_session
        self.max_sessions = int(max_sessions)
        self.idle_timeout_s = float(idle_timeout_s)
        self.liveness_timeout_s = float(liveness_timeout_s)
        self._leases: Dict[str, Lease] = {}
        self._lock = threading.Lock()

    def claim(self) -> str:
        self.sweep()
        with self._lock:
            if len(self._leases) >= self.max_sessions:
                raise AtCapacity(f"server is at capacity ({self.max_sessions} session(s)); retry later")
            token = secrets.token_urlsafe(24)
            self._leases[token] = Lease(self._new_session())
            return token

    def _lookup(self, token: Optional[str]) -> Lease:
        if not token:
            raise LeaseGone("lease token missing: claim a session first (POST /claim)")
        self.sweep()
        with self._lock:
            lease = self._leases.get(token)
        if lease is None:
            raise LeaseGone("lease expired or unknown: the session was reaped (idle or no heartbeat) or the server "
                            "restarted; claim a new one and set the image again")
        return lease

    def get(self, token: Optional[str]) -> Lease:
        """A lease for a real action: refreshes both clocks."""
        lease = self._lookup(token)
        lease.mark_active()
        return lease

    def heartbeat(self, token: Optional[str]) -> Lease:
        lease = self._lookup(token)
        lease.mark_seen()
        return lease

    def peek(self, token: Optional[str]) -> Lease:
        return self._lookup(token)

    def release(self, token: Optional[str]) -> bool:
        with self._lock:
            return self._leases.pop(token, None) is not None if token else False

    def remaining_s(self, lease: Lease) -> float:
        return max(0.0, self.idle_timeout_s - (time.monotonic() - lease.last_active))

    def sweep(self) -> int:
        now = time.monotonic()
        with self._lock:
            dead = [t for t, l in self._leases.items()
                    if now - l.last_active > self.idle_timeout_s or now - l.last_seen > self.liveness_timeout_s]
            for t in dead:
                del self._leases[t]
        return len(dead)

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)
