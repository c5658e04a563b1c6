"""`redirgate pki ...`: create the CA and issue and revoke certificates.

Thin argument glue over :mod:`redirgate.gateway.pki`; owns only the command
line and its messages.  Exit status: 0 done, 1 a PKI error (already exists,
missing CA, unreadable file), 2 invalid arguments (argparse).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from redirgate.gateway import pki


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("pki", help="certificate authority: create it, issue and revoke certificates")
    sub = parser.add_subparsers(dest="pki_command", metavar="PKI_COMMAND", required=True)

    def common(p: argparse.ArgumentParser, *, days: int | None) -> None:
        p.add_argument("--dir", required=True, help="the PKI directory")
        p.add_argument("--force", action="store_true", help="replace existing keys and certificates")
        if days is not None:
            p.add_argument("--days", type=int, default=days, help=f"validity in days (default {days})")

    init = sub.add_parser("init", help="create the CA (ECDSA P-256), an empty CRL and revoked list")
    common(init, days=pki.CA_VALID_DAYS)
    init.add_argument("--cn", default="redirgate CA", help="the CA's common name")
    init.set_defaults(run=_run_init)

    gateway = sub.add_parser("issue-gateway", help="server certificate for a gateway host")
    common(gateway, days=pki.LEAF_VALID_DAYS)
    gateway.add_argument("--name", required=True, metavar="HOST", help="the gateway's DNS name (CN and first SAN)")
    gateway.add_argument("--dns", action="append", default=[], metavar="NAME", help="another DNS name (repeatable)")
    gateway.add_argument("--ip", action="append", default=[], metavar="ADDRESS", help="an IP address SAN (repeatable)")
    gateway.set_defaults(run=_run_gateway)

    client = sub.add_parser("issue-client", help="client certificate for thin client NAME")
    common(client, days=pki.LEAF_VALID_DAYS)
    client.add_argument("name", metavar="NAME")
    client.set_defaults(run=_run_client)

    hypervisor = sub.add_parser(
        "issue-hypervisor", help="QEMU tls-creds-x509 directory (ca-cert.pem, client-cert.pem, client-key.pem)"
    )
    common(hypervisor, days=pki.LEAF_VALID_DAYS)
    hypervisor.add_argument("name", metavar="NAME")
    hypervisor.set_defaults(run=_run_hypervisor)

    request = sub.add_parser(
        "request",
        help="on the host that will hold the key: make it and a certificate request (CSR) for `pki sign`; "
        "no CA needed here",
    )
    request.add_argument("--out", required=True, help="folder for the key (mode 0600) and request.csr")
    request.add_argument("--force", action="store_true", help="replace an existing key and request")
    kinds = request.add_mutually_exclusive_group(required=True)
    kinds.add_argument("--gateway", metavar="HOST", help="a gateway's server certificate for DNS name HOST")
    kinds.add_argument("--client", metavar="NAME", help="thin client NAME's certificate")
    kinds.add_argument("--hypervisor", metavar="NAME", help="hypervisor NAME's certificate")
    request.add_argument("--dns", action="append", default=[], metavar="NAME", help="gateway: another DNS name")
    request.add_argument("--ip", action="append", default=[], metavar="ADDRESS", help="gateway: an IP address SAN")
    request.set_defaults(run=_run_request)

    sign = sub.add_parser(
        "sign", help="on the admin machine: sign a request from `pki request` with the CA (the key never travels)"
    )
    common(sign, days=pki.LEAF_VALID_DAYS)
    signed = sign.add_mutually_exclusive_group(required=True)
    signed.add_argument("--gateway", action="store_true", help="sign it as a gateway's server certificate")
    signed.add_argument("--client", action="store_true", help="sign it as a thin client's certificate")
    signed.add_argument("--hypervisor", action="store_true", help="sign it as a hypervisor's certificate")
    sign.add_argument("csr", metavar="CSR", help="the request.csr file")
    sign.set_defaults(run=_run_sign)

    listing = sub.add_parser("list", help="every certificate issued here, with its expiry date and revocation")
    listing.add_argument("--dir", required=True, help="the PKI directory")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(run=_run_list)

    revoke = sub.add_parser(
        "revoke",
        help="revoke NAME's certificate (a client, hypervisor or gateway) and re-sign crl.pem; "
        "gateways apply it without restart and hand it to their clients",
    )
    revoke.add_argument("--dir", required=True, help="the PKI directory")
    what = revoke.add_mutually_exclusive_group()
    what.add_argument("--hypervisor", action="store_true", help="NAME is a hypervisor, not a client")
    what.add_argument("--gateway", action="store_true", help="NAME is a gateway host (clients then refuse it)")
    revoke.add_argument("--days", type=int, default=pki.CRL_VALID_DAYS, help="the CRL's nextUpdate, in days")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(run=_run_revoke)

    crl = sub.add_parser(
        "crl", help="sign crl.pem again with a new nextUpdate (gateways refuse handshakes once it has passed)"
    )
    crl.add_argument("--dir", required=True, help="the PKI directory")
    crl.add_argument("--days", type=int, default=pki.CRL_VALID_DAYS, help="the CRL's nextUpdate, in days")
    crl.set_defaults(run=_run_crl)


def _report(what: str, issued: pki.Issued) -> None:
    print(f"{what}: {issued.cert}")
    print(f"  key:    {issued.key} (mode 0600)")
    print(f"  CA:     {issued.ca}")
    print(f"  serial: {issued.serial:x}, valid until {issued.not_valid_after:%Y-%m-%d}")


def _guard(run: Any) -> Any:
    def wrapper(args: argparse.Namespace) -> int:
        try:
            run(args)
        except pki.PkiError as exc:
            print(f"redirgate pki: {exc}", file=sys.stderr)
            return 1
        return 0

    return wrapper


@_guard
def _run_init(args: argparse.Namespace) -> None:
    _report("CA", pki.init_ca(args.dir, common_name=args.cn, valid_days=args.days, force=args.force))


@_guard
def _run_gateway(args: argparse.Namespace) -> None:
    issued = pki.issue_gateway(
        args.dir, args.name, dns_names=args.dns, ips=args.ip, valid_days=args.days, force=args.force
    )
    _report("gateway certificate", issued)


@_guard
def _run_client(args: argparse.Namespace) -> None:
    _report("client certificate", pki.issue_client(args.dir, args.name, valid_days=args.days, force=args.force))


@_guard
def _run_hypervisor(args: argparse.Namespace) -> None:
    issued = pki.issue_hypervisor(args.dir, args.name, valid_days=args.days, force=args.force)
    _report("hypervisor certificate", issued)
    print(
        f"  QEMU:   -object tls-creds-x509,id=tls0,endpoint=client,dir={issued.cert.parent} "
        "-chardev socket,id=...,host=GATEWAY,port=PORT,tls-creds=tls0"
    )


@_guard
def _run_request(args: argparse.Namespace) -> None:
    if args.gateway:
        kind, name = pki.CertKind.GATEWAY, args.gateway
    elif args.client:
        kind, name = pki.CertKind.CLIENT, args.client
    else:
        kind, name = pki.CertKind.HYPERVISOR, args.hypervisor
    made = pki.make_request(args.out, kind, name, dns_names=args.dns, ips=args.ip, force=args.force)
    print(f"{kind.value} key: {made.key} (mode 0600; it stays on this host)")
    print(f"  request: {made.csr}: send it to the admin machine for `redirgate pki sign --{kind.value}`")


@_guard
def _run_sign(args: argparse.Namespace) -> None:
    kind = pki.CertKind.GATEWAY if args.gateway else pki.CertKind.CLIENT if args.client else pki.CertKind.HYPERVISOR
    issued = pki.sign_request(args.dir, args.csr, kind, valid_days=args.days, force=args.force)
    print(f"{kind.value} certificate: {issued.cert}")
    print(f"  CA:     {issued.ca}")
    print(f"  serial: {issued.serial:x}, valid until {issued.not_valid_after:%Y-%m-%d}")
    print(f"  send back {issued.cert.name}, {issued.ca.name} and crl.pem; the key ({issued.key}) is already there")


@_guard
def _run_revoke(args: argparse.Namespace) -> None:
    kind = pki.CertKind.HYPERVISOR if args.hypervisor else pki.CertKind.GATEWAY if args.gateway else pki.CertKind.CLIENT
    entry = pki.revoke(args.dir, args.name, kind=kind, valid_days=args.days)
    print(f"revoked {entry.kind.value} {entry.name} (serial {entry.serial:x}); crl.pem rewritten")
    print("  copy crl.pem to every gateway (they re-read it by themselves and hand it to their clients)")


@_guard
def _run_crl(args: argparse.Namespace) -> None:
    path = pki.resign_crl(args.dir, valid_days=args.days)
    print(f"CRL: {path} signed again, valid for {args.days} day(s); copy it to every gateway")


@_guard
def _run_list(args: argparse.Namespace) -> None:
    import datetime as dt
    import json
    from pathlib import Path

    if not (Path(args.dir) / "ca-cert.pem").exists():
        raise pki.PkiMissing(Path(args.dir) / "ca-cert.pem", "no CA here (redirgate pki init --dir DIR)")
    now = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    for item in pki.list_certificates(args.dir):
        days = item.days_left(now)
        state = (
            "revoked"
            if item.revoked
            else "expired"
            if days < 0
            else "expiring"
            if days < pki.EXPIRY_WARNING_DAYS
            else "ok"
        )
        rows.append(
            {
                "kind": item.kind,
                "name": item.name,
                "serial": f"{item.serial:x}",
                "not_after": item.not_after.strftime("%Y-%m-%d"),
                "days_left": int(days),
                "state": state,
                "path": str(item.path),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'KIND':<11}{'NAME':<28}{'EXPIRES':<12}{'DAYS':>6}  {'STATE':<9}SERIAL")
    for row in rows:
        print(
            f"{row['kind']:<11}{row['name'][:27]:<28}{row['not_after']:<12}{row['days_left']:>6}  "
            f"{row['state']:<9}{row['serial']}"
        )
