"""lbclient's errors join httpx's tree, so handlers written for httpx keep working::

    httpx.HTTPError
     └ httpx.RequestError
        └ httpx.TransportError
           ├ httpx.UnsupportedProtocol
           │  └ NotInPoolError      the request is not the pool's and bypass=False keeps it in, or it
           │                        names the service with another scheme or port than the pool's
           └ NoAvailableHostError   no host of the pool can take the request (all drained,
              │                     all at their max_in_flight, or all ejected or unhealthy
              │                     with panic turned off)
              └ ClientClosedError   the client (or transport) was closed before the request could
                                    be sent, or while it was in flight

Bad configuration raises ``ValueError`` at construction, naming the offending value.
"""

from __future__ import annotations

import httpx

__all__ = ["ClientClosedError", "NoAvailableHostError", "NotInPoolError"]


class NoAvailableHostError(httpx.TransportError):
    """No host of the pool could be picked for the request."""


class ClientClosedError(NoAvailableHostError):
    """The balancing client or transport was closed: the request was not sent, or was cut and is not
    retried. (httpx itself raises ``RuntimeError`` for a request made after its client closed; this is
    the error of the requests that were already on their way.)"""


class NotInPoolError(httpx.UnsupportedProtocol):
    """A request the balancer will not send: with ``bypass=False``, one that is not the pool's (nothing
    leaves the pool); always, one that names the pool's service with another scheme or port than the
    pool's own (the hosts give scheme and port, so it could only be sent somewhere it does not name).
    The message names the URL."""
