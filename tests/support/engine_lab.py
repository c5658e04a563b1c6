"""Helpers for the HostEngine tests driven by the reference guest
(tests/client/test_engine_*.py, test_usb_iso_batch.py): the status values,
the device source for a virtual backend, and the configuration steps every
such test starts with.  The device fixtures are in tests/client/conftest.py.
"""

from __future__ import annotations

from redirgate.client.usb.selector import parse_selector
from redirgate.client.usb.source import SelectorSource
from redirgate.client.virtual import VirtualBackend
from tests.support.refguest import RefEvent, RefGuest, T

#: usb_redir_status values (protocol reference §3.4)
SUCCESS, CANCELLED, INVAL, IOERROR, STALL = 0, 1, 2, 3, 4


def source_for(backend: VirtualBackend, spec: str = "virtual:any") -> SelectorSource:
    """The engine's device source: `spec` on `backend`, rescanned every 20 ms."""
    return SelectorSource(parse_selector(spec), backend=backend, poll_interval_s=0.02)


async def set_configuration(guest: RefGuest, value: int = 1) -> tuple[RefEvent, RefEvent, RefEvent]:
    """set_configuration: interface_info, ep_info, then the status, in order."""
    msg_id = guest.next_id()
    await guest.send(T.SET_CONFIGURATION, msg_id, configuration=value)
    info = await guest.expect_next(T.INTERFACE_INFO)
    eps = await guest.expect_next(T.EP_INFO)
    status = await guest.expect_next(T.CONFIGURATION_STATUS)
    assert status.id == msg_id
    return info, eps, status


async def set_configuration_1(guest: RefGuest) -> None:
    """Configuration 1, which must succeed."""
    _, _, status = await set_configuration(guest)
    assert status.fields == {"status": SUCCESS, "configuration": 1}


async def configure(guest: RefGuest) -> None:
    """The hello and the device announcement, then configuration 1."""
    await guest.expect_next(T.HELLO)
    await guest.expect_announcement()
    await set_configuration_1(guest)


async def processed(guest: RefGuest) -> None:
    """A get_configuration round trip: the engine handles a connection's
    messages in order, so everything sent before it has been processed, and
    whatever the engine sent while doing so has arrived before the reply."""
    await guest.request(T.GET_CONFIGURATION)


async def iso_alt(guest: RefGuest) -> None:
    """Alternate setting 1 of interface 1: the loopback's iso endpoints."""
    await guest.send(T.SET_ALT_SETTING, guest.next_id(), interface=1, alt=1)
    await guest.expect_next(T.INTERFACE_INFO)
    await guest.expect_next(T.EP_INFO)
    status = await guest.expect_next(T.ALT_SETTING_STATUS)
    assert status.fields == {"status": SUCCESS, "interface": 1, "alt": 1}
