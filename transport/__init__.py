"""redirgate.transport: byte movers shared by the gateway and the client.

Owns the TLS contexts (:mod:`.tls`), the zero-copy streams (:mod:`.stream`),
the relay pump (:mod:`.relay`), the certificate identity convention
(:mod:`.identity`), the transport errors (:mod:`.errors`) and the driver of a
tunnel control session with the one "peer gone" error (:mod:`.control`).

It must never hold gateway state or import anything from `redirgate.gateway`
or `redirgate.client`: both use it
(tests/test_import_rules.py walks the imports).
"""

from redirgate.transport.control import ControlSession, PeerGone, PeerSilent, peer_gone
from redirgate.transport.errors import Refusal, TlsRefused, TransportError
from redirgate.transport.identity import (
    IDENTITY_URI_PREFIX,
    IdentityError,
    PeerKind,
    identity_from_certificate,
    identity_uri,
    validate_name,
)
from redirgate.transport.prefixed import PrefixedStream
from redirgate.transport.reactor import RelayReactor
from redirgate.transport.relay import (
    DEFAULT_BUFFER_BYTES,
    RelayStats,
    pump,
    relay,
)
from redirgate.transport.stream import (
    PlainSocketStream,
    ReceiveIntoStream,
    ZeroCopyTLSStream,
    accept_tls,
    open_plain_connection,
    open_tls_connection,
    set_nodelay,
)
from redirgate.transport.tls import (
    ClientContext,
    RevocationChecker,
    client_context,
    hypervisor_server_context,
    refusal_from_ssl_error,
    server_context,
    verify_peer,
)

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "IDENTITY_URI_PREFIX",
    "ClientContext",
    "ControlSession",
    "IdentityError",
    "PeerGone",
    "PeerKind",
    "PeerSilent",
    "PlainSocketStream",
    "PrefixedStream",
    "ReceiveIntoStream",
    "Refusal",
    "RelayReactor",
    "RelayStats",
    "RevocationChecker",
    "TlsRefused",
    "TransportError",
    "ZeroCopyTLSStream",
    "accept_tls",
    "client_context",
    "hypervisor_server_context",
    "identity_from_certificate",
    "identity_uri",
    "open_plain_connection",
    "open_tls_connection",
    "peer_gone",
    "pump",
    "refusal_from_ssl_error",
    "relay",
    "server_context",
    "set_nodelay",
    "validate_name",
    "verify_peer",
]
