"""[[parallel]] in the client config, ParallelExports (inventory entries,
channels) and PortExports, the serial + parallel composite TunnelClient uses.

A channel is served exactly as the tunnel does it: an OpenChannel for
`parallel:NAME` and a stream (here a trio memory stream pair) whose bytes
must reach the FIFO standing in for the printer."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from redirgate.client.config import ConfigError, load_client_config
from redirgate.client.exports import PortExports
from redirgate.client.parallel.exports import ParallelExport, ParallelExports
from redirgate.client.serial.exports import SerialExports
from redirgate.proto.tunnel import ChannelProtocol, DeviceKind, OpenChannel
from tests.support.parallel_lab import fifo


def _config(tmp_path: Path, body: str) -> Path:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "client.toml"
    path.write_text(
        '[client]\ngateway = "127.0.0.1:7443"\ncert = "cert.pem"\nkey = "key.pem"\nca = "ca.pem"\n\n[export]\n' + body
    )
    return path


def test_parallel_tables_are_parsed(tmp_path: Path) -> None:
    config = load_client_config(
        _config(
            tmp_path,
            """
[[parallel]]
name = "printer"
port = "/dev/lp0"

[[parallel]]
name = "label-printer"
port = "/dev/usb/lp1"
ring_bytes = 65536

[[serial]]
name = "printer"
port = "/dev/ttyUSB0"
""",
        )
    )
    assert config.parallel == (
        ParallelExport("printer", "/dev/lp0", 4 * 1024 * 1024),
        ParallelExport("label-printer", "/dev/usb/lp1", 65536),
    )
    assert len(config.serial) == 1  # serial:printer and parallel:printer are different devices


def test_parallel_mistakes_are_all_reported(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """
[[parallel]]
port = "/dev/lp0"

[[parallel]]
name = "a"
port = "lp0"

[[parallel]]
name = "b"
port = "/dev/lp1"
ring_bytes = 0

[[parallel]]
name = "c"
port = "/dev/lp2"
ring_bytes = true
speed = 9600

[[parallel]]
name = "d"
port = "/dev/lp3"

[[parallel]]
name = "d"
port = "/dev/lp4"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_client_config(path)
    text = "\n".join(info.value.problems)
    assert "parallel[0].name: missing" in text
    assert "parallel[1].port: 'lp0': expected a device path such as /dev/lp0" in text
    assert "parallel[2].ring_bytes: 0: a byte count in 1..67108864" in text
    assert "parallel[3].ring_bytes: True" in text
    assert "parallel[3].speed: unknown key (expected one of: name, port, ring_bytes)" in text
    assert "parallel: export name 'd' is used twice" in text
    assert all(p.startswith(str(path)) for p in info.value.problems)


def test_parallel_must_be_an_array_of_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parallel: must be an array of tables"):
        load_client_config(_config(tmp_path, '[parallel]\nname = "x"\n'))


def test_entries_name_the_port_and_its_state(tmp_path: Path) -> None:
    exports = ParallelExports([ParallelExport("printer", str(tmp_path / "lp0"))])
    (entry,) = exports.entries()
    assert entry.id == "parallel:printer" and entry.kind is DeviceKind.PARALLEL
    assert entry.port_path == str(tmp_path / "lp0") and entry.description == "printer absent"
    assert exports.knows("parallel:printer")
    assert not exports.knows("parallel:other") and not exports.knows("serial:printer")


async def test_a_gateway_channel_reaches_the_printer_and_the_inventory_follows(tmp_path: Path) -> None:
    with fifo(tmp_path / "lp0") as printer:
        exports = ParallelExports([ParallelExport("printer", str(printer.path))])
        ports = PortExports(parallel=exports)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ports.run)
            service = exports.services["printer"]
            await service.port_up.wait()
            assert exports.entries()[0].description == "status unknown"
            request = OpenChannel(5, "parallel:printer", b"t" * 16, ChannelProtocol.RAW)
            assert ports.knows(request.device_selector)
            gateway_side, client_side = trio.testing.memory_stream_pair()
            nursery.start_soon(ports.serve, request, client_side)
            await gateway_side.send_all(b"%!PS\nshowpage\n")
            await gateway_side.send_eof()
            assert await printer.read_exactly(14) == b"%!PS\nshowpage\n"
            nursery.cancel_scope.cancel()


def test_port_exports_compose_serial_and_parallel(tmp_path: Path) -> None:
    from redirgate.client.serial.exports import SerialExport
    from redirgate.client.serial.selector import parse_port_selector
    from redirgate.client.serial.settings import LineSettings

    serial = SerialExports([SerialExport("console", parse_port_selector("/dev/ttyS9"), LineSettings.parse("9600,8N1"))])
    parallel = ParallelExports([ParallelExport("printer", "/dev/lp9")])
    ports = PortExports(serial, parallel)
    assert [e.id for e in ports.entries()] == ["serial:console", "parallel:printer"]
    assert ports.knows("serial:console") and ports.knows("parallel:printer")
    assert not ports.knows("serial:printer") and not ports.knows("parallel:console")

    class Empty:
        serial: tuple[object, ...] = ()
        parallel: tuple[object, ...] = ()

    assert PortExports.from_config(Empty()) is None
