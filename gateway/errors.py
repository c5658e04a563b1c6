"""The gateway's exception hierarchy: every error names the peer and the reason."""

from __future__ import annotations

__all__ = ["ChannelError", "ClientGone", "GatewayError", "ListenError"]


class GatewayError(Exception):
    """Base of gateway errors; `peer` is a client identity, a route or host:port."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer}: {reason}")
        self.peer = peer
        self.reason = reason


class ChannelError(GatewayError):
    """A channel could not be opened or ended abnormally."""


class ClientGone(ChannelError):
    """The client's control connection ended while a channel depended on it."""


class ListenError(GatewayError):
    """A listener could not be opened; `peer` names the config key (gateway.tunnel_listen, route NAME)."""
