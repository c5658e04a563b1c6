"""What `client run` would trip on, found before it dials: `redirgate client check`.

`load_client_config` checks the file; `preflight(config)` checks the files
it names: the certificate, key, CA and CRL parse (the CRL signed by the CA), the key matches the
certificate and only its owner may read it, and every emulated device's
spec opens (a storage image that is missing is named here, not in a
traceback later).  One line per problem, in the loader's form
(`FILE: KEY: reason`).  Blocking file reads: call it before trio runs.
"""

from __future__ import annotations

from redirgate.client.config import ClientConfig
from redirgate.transport import crl_problems, tls_file_problems

__all__ = ["preflight"]


def preflight(config: ClientConfig) -> list[str]:
    problems = [
        f"{config.path}: client.{role}: {reason}"
        for role, reason in tls_file_problems(cert=config.cert, key=config.key, ca=config.ca)
    ]
    if config.crl is not None:
        # a stale local CRL is fine: the gateway hands a newer one, and the newest seen counts
        problems += [f"{config.path}: client.crl: {r}" for r in crl_problems(config.crl, config.ca, stale_ok=True)]
    if config.export.virtual:
        from redirgate.client.virtual import VirtualSpecError, make_backend

        for spec in config.export.virtual:
            try:
                make_backend([spec]).close()
            except VirtualSpecError as exc:
                problems.append(f"{config.path}: export.virtual: {exc}")
    return problems
