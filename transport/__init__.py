"""redirgate.transport: byte movers shared by the gateway and the client.

Owns the TLS contexts (:mod:`.tls`), the zero-copy streams (TLS:
:mod:`.stream`, plain TCP: :mod:`.plain`, a prefix before either:
:mod:`.prefixed`), the Protocols streams are handed over as
(:mod:`.interfaces`), the relay pump and its hook for another mover
(:mod:`.relay`), peer naming (:mod:`.sockets`), the certificate identity
convention (:mod:`.identity`), the transport errors (:mod:`.errors`) and the
driver of a tunnel control session with the one "peer gone" error
(:mod:`.control`), the one task that runs many sessions' heartbeat timers
(:mod:`.timers`) and the one that reads them while they are quiet (:mod:`.quiet`), the CRL both ends trust when our CA signed it (:mod:`.crl`), and the data stream of a resumable channel
(:mod:`.resumable`, issue 16), and the relay reactor thread that moves
channels' bytes on lent sockets outside trio (:mod:`.reactor`; the gateway
runs one per process).
Import its public names from here, not from the submodules.

It must never hold gateway state or import anything from `redirgate.gateway`
or `redirgate.client`: both use it
(tests/test_import_rules.py walks the imports).
"""

from redirgate.transport.control import ControlSession, Handler, PeerGone, PeerSilent, peer_gone
from redirgate.transport.crl import CrlError, NewestCrl, SignedCrl, crl_number, parse_crl, read_crl
from redirgate.transport.errors import Refusal, TlsRefused, TransportError, stream_error
from redirgate.transport.identity import (
    IDENTITY_URI_PREFIX,
    IdentityError,
    PeerKind,
    identity_from_certificate,
    identity_uri,
    validate_name,
)
from redirgate.transport.interfaces import (
    Buffer,
    Handover,
    Inspector,
    NonBlockingStream,
    ReceiveIntoStream,
    ResumeHook,
    SocketLender,
    nonblocking,
)
from redirgate.transport.metrics_http import serve_metrics
from redirgate.transport.plain import PlainSocketStream, open_plain_connection
from redirgate.transport.prefixed import PrefixedStream
from redirgate.transport.quiet import QuietReader
from redirgate.transport.reactor import ReactorOutcome, ReactorSide, RelayReactor
from redirgate.transport.relay import (
    DEFAULT_BUFFER_BYTES,
    RelayStats,
    SocketMover,
    drop_prefixes,
    pump,
    relay,
    resumable_under,
)
from redirgate.transport.resumable import Reconnect, ResumableStream
from redirgate.transport.sockets import cut_fd, peer_label, set_nodelay
from redirgate.transport.stream import (
    FULL_RECORD_BYTES,
    BusyTickets,
    ZeroCopyTLSStream,
    accept_tls,
    open_tls_connection,
    record_layer,
)
from redirgate.transport.timers import Timer, TimerWheel
from redirgate.transport.tls import (
    ClientContext,
    RevocationChecker,
    client_context,
    hypervisor_server_context,
    refusal_from_ssl_error,
    server_context,
    verify_peer,
)
from redirgate.transport.tls_files import crl_problems, key_mode_problem, tls_file_problems

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "FULL_RECORD_BYTES",
    "IDENTITY_URI_PREFIX",
    "Buffer",
    "BusyTickets",
    "ClientContext",
    "ControlSession",
    "CrlError",
    "Handler",
    "Handover",
    "IdentityError",
    "Inspector",
    "NewestCrl",
    "NonBlockingStream",
    "PeerGone",
    "PeerKind",
    "PeerSilent",
    "PlainSocketStream",
    "PrefixedStream",
    "QuietReader",
    "ReactorOutcome",
    "ReactorSide",
    "ReceiveIntoStream",
    "Reconnect",
    "Refusal",
    "RelayReactor",
    "RelayStats",
    "ResumableStream",
    "ResumeHook",
    "RevocationChecker",
    "SignedCrl",
    "SocketLender",
    "SocketMover",
    "Timer",
    "TimerWheel",
    "TlsRefused",
    "TransportError",
    "ZeroCopyTLSStream",
    "accept_tls",
    "client_context",
    "crl_number",
    "crl_problems",
    "cut_fd",
    "drop_prefixes",
    "hypervisor_server_context",
    "identity_from_certificate",
    "identity_uri",
    "key_mode_problem",
    "nonblocking",
    "open_plain_connection",
    "open_tls_connection",
    "parse_crl",
    "peer_gone",
    "peer_label",
    "pump",
    "read_crl",
    "record_layer",
    "refusal_from_ssl_error",
    "relay",
    "resumable_under",
    "serve_metrics",
    "server_context",
    "set_nodelay",
    "stream_error",
    "tls_file_problems",
    "validate_name",
    "verify_peer",
]
