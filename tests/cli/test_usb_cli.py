"""`client devices` and `client serve-usb` on what must never be exported,
and their one-line errors: real processes, emulated devices."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.services import redirgate

HUB_REASON = "it is a USB hub, and exporting it would take every device behind it off the thin client"


def test_devices_json_gives_one_object_per_device_with_the_reason() -> None:
    out = redirgate(
        "client",
        "devices",
        "--json",
        "--virtual",
        "virtual:hub",
        "--virtual",
        "virtual:keyboard",
        "--virtual",
        "virtual:loopback",
        "--policy",
        "0x03,-1,-1,-1,1|0x09,-1,-1,-1,1|-1,-1,-1,-1,0",
    )
    assert out.returncode == 0, out.stderr
    rows = {(row["vendor_id"], row["product_id"]): row for row in json.loads(out.stdout)}  # only JSON on stdout
    assert len(rows) == 3
    hub, keyboard, loopback = rows[0x1D6B, 0x0002], rows[0x1209, 0x0002], rows[0x1209, 0x0003]
    for row in (hub, keyboard, loopback):
        assert set(row) >= {
            "id",
            "vendor_id",
            "product_id",
            "device_class",
            "port_path",
            "serial",
            "exportable",
            "reason",
        }
    # the policy allows hubs (class 0x09): refused all the same
    assert hub["exportable"] is False and hub["reason"] == HUB_REASON and hub["device_class"] == 9
    assert hub["id"] == f"usb-port:{hub['port_path']}" and hub["serial"] is None
    assert keyboard == keyboard | {"exportable": True, "reason": None, "serial": "KBD0000000001"}
    assert keyboard["id"] == "usb:1209:0002:KBD0000000001" and keyboard["port_path"].startswith("254-")
    assert loopback["exportable"] is False and "--policy rules do not allow it" in loopback["reason"]


def test_devices_table_says_why_a_device_is_not_exportable() -> None:
    out = redirgate("client", "devices", "--virtual", "virtual:hub", "--virtual", "virtual:keyboard")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n\n", 1)[0].splitlines()
    hub = next(i for i, line in enumerate(lines) if "1d6b:0002" in line)
    assert lines[hub].split()[4] == "no"
    assert lines[hub + 1].strip() == f"not exportable: {HUB_REASON}"
    assert next(line for line in lines if "1209:0002" in line).split()[4] == "yes"


def test_serve_usb_refuses_a_hub_in_one_line() -> None:
    out = redirgate("client", "serve-usb", "--listen", "127.0.0.1:0", "virtual:hub")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"redirgate: refusing 1d6b:0002 redirgate Virtual Hub at 254-1: {HUB_REASON}"]


def test_serve_usb_with_a_missing_image_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.img"
    out = redirgate("client", "serve-usb", "--listen", "127.0.0.1:0", f"virtual:storage:{missing}")
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("redirgate: ") and f"cannot open the image {missing}: no such file" in line
