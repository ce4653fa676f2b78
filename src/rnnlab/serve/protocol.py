"""How the server meets connections: uvicorn, with a deadline for a request's line and headers.

uvicorn waits forever for a client that opens a connection and sends its headers a byte at a time
(slow-loris): each such client holds a connection. Here a client has `--request-timeout` seconds,
from connecting or from its previous response, to finish its headers; the Guard gives it as long
again for the body.
"""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from rnnlab.config import ServeConfig


def headers_in_time(timeout: float) -> type[H11Protocol]:
    class HeadersInTime(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers are in: the request is under way

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # a kept-alive connection: the next request's headers have the same deadline

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return HeadersInTime


def server_config(app, config: ServeConfig) -> uvicorn.Config:
    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                          timeout_keep_alive=config.idle_timeout, http=headers_in_time(config.request_timeout))
