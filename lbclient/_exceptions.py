"""lbclient's errors join httpx's tree, so handlers written for httpx keep working::

    httpx.HTTPError
     └ httpx.RequestError
        └ httpx.TransportError
           └ NoAvailableHostError   no host of the pool can take the request (all drained,
                                    or all ejected or unhealthy with panic turned off, or
                                    every available host at its max_in_flight: the message
                                    says so)

Bad configuration raises ``ValueError`` at construction, naming the offending value.
"""

from __future__ import annotations

import httpx

__all__ = ["NoAvailableHostError"]


class NoAvailableHostError(httpx.TransportError):
    """No host of the pool could be picked for the request."""
