"""lbclient's errors join httpx's tree, so handlers written for httpx keep working::

    httpx.HTTPError
     └ httpx.RequestError
        └ httpx.TransportError
           └ NoAvailableHostError   no host of the pool can take the request (all drained,
              │                     all at their max_in_flight, or all ejected or unhealthy
              │                     with panic turned off)
              └ ClientClosedError   the client (or transport) was closed before the request could
                                    be sent, or while it was in flight

Bad configuration raises ``ValueError`` at construction, naming the offending value.
"""

from __future__ import annotations

import httpx

__all__ = ["ClientClosedError", "NoAvailableHostError"]


class NoAvailableHostError(httpx.TransportError):
    """No host of the pool could be picked for the request."""


class ClientClosedError(NoAvailableHostError):
    """The balancing client or transport was closed: the request was not sent, or was cut and is not
    retried. (httpx itself raises ``RuntimeError`` for a request made after its client closed; this is
    the error of the requests that were already on their way.)"""
