"""The access-server side of RFC 2217 (Telnet Com Port Control) on a trio stream.

Owns one consumer connection speaking telnet: the `redirgate.proto.telnet`
codec parses it, and this module turns its events into actions on the
attached `Session` (line settings, DTR/RTS, BREAK, purges, flow suspend) and
sends the answers RFC 2217 requires, plus NOTIFY-MODEMSTATE / -LINESTATE
from a poll of the port (filtered by the masks the client set).

Rules it keeps:
* every SET-* command is answered with the value *now in force* (RFC 2217
  section 3): a refused setting (an absurd baud rate, 7 data bits on a pty)
  is answered with the unchanged value and logged, and the port stays as it
  was;
* a malformed part (telnet garbage, an unknown option or COM-PORT command, a
  subnegotiation without its IAC SE) costs only itself: one log line, and a
  command whose code is known but whose value is bad still gets the current
  value back, so a client waiting for an answer is not left hanging;
* consumer bytes are never dropped: `Session.write` waits for room, so a slow
  port back-pressures the consumer through TCP.

A tty without modem-control lines (a pty) takes SET-CONTROL DTR/RTS as a
recorded state that is acknowledged but has no effect (logged once);
otherwise pyserial's client could never open it.  Linux has one hardware
flow setting for both directions, so inbound flow commands set the same one;
DCD/DSR/DTR flow control do not exist on Linux and are refused.

Not done: NVT CR-NUL stuffing (BINARY is offered both ways and data is
treated as binary, like ser2net), answering FLOWCONTROL-SUSPEND for commands.
"""

from __future__ import annotations

import logging
import termios
from typing import Final

import trio

from redirgate.client.serial.errors import SettingError
from redirgate.client.serial.port import SerialPort
from redirgate.client.serial.service import Session
from redirgate.client.serial.settings import LineSettings
from redirgate.proto.telnet import (
    CLOSED,
    NEED_DATA,
    Command,
    ComPort,
    ComPortCommand,
    ComPortValueError,
    Control,
    Data,
    LineState,
    ModemState,
    Option,
    OptionChanged,
    Parity,
    Purge,
    RemoteProtocolError,
    Role,
    StopSize,
    Subnegotiation,
    TelnetConnection,
)
from redirgate.proto.telnet.constants import DONT, IAC, WONT, Cmd

__all__ = ["MODEM_POLL_INTERVAL_S", "TELNET_BREAK_S", "ComPortServer"]

log = logging.getLogger(__name__)

RECEIVE_BYTES: Final = 65536
#: How often modem lines / line errors are read from the port.
MODEM_POLL_INTERVAL_S: Final = 0.1
#: Length of the BREAK sent for a telnet `IAC BREAK` (QEMU's telnet server and
#: tcsendbreak(fd, 0) use 0.25..0.5 s).
TELNET_BREAK_S: Final = 0.25
#: Default masks: pyserial's PortManager (modem 255, line 0).
DEFAULT_MODEMSTATE_MASK: Final = 0xFF
DEFAULT_LINESTATE_MASK: Final = 0

_ACCEPT_LOCAL = (Option.BINARY, Option.ECHO, Option.SGA, Option.COM_PORT)
_ACCEPT_REMOTE = (Option.BINARY, Option.SGA, Option.COM_PORT)
_PARITY_TO_RFC = {"N": Parity.NONE, "O": Parity.ODD, "E": Parity.EVEN, "M": Parity.MARK, "S": Parity.SPACE}
_RFC_TO_PARITY = {v: k for k, v in _PARITY_TO_RFC.items()}
_STOP_TO_RFC = {1: StopSize.ONE, 2: StopSize.TWO, 1.5: StopSize.ONE_AND_HALF}
_RFC_TO_STOP = {v: k for k, v in _STOP_TO_RFC.items()}
# TIOCM_* bit -> NOTIFY-MODEMSTATE bit
_MODEM_BITS = (
    (termios.TIOCM_CTS, ModemState.CTS),
    (termios.TIOCM_DSR, ModemState.DSR),
    (termios.TIOCM_RI, ModemState.RI),
    (termios.TIOCM_CD, ModemState.CD),
)


def modem_state(lines: int | None) -> int:
    """TIOCM_* bits as RFC 2217 modem-state bits (no delta bits); 0 for None."""
    if lines is None:
        return 0
    return sum(int(bit) for tiocm, bit in _MODEM_BITS if lines & tiocm)


def modem_deltas(old: int, new: int) -> int:
    """The delta bits of a NOTIFY-MODEMSTATE going from `old` to `new`."""
    changed = old ^ new
    deltas = 0
    if changed & ModemState.CTS:
        deltas |= ModemState.DELTA_CTS
    if changed & ModemState.DSR:
        deltas |= ModemState.DELTA_DSR
    if changed & ModemState.CD:
        deltas |= ModemState.DELTA_CD
    if old & ModemState.RI and not new & ModemState.RI:
        deltas |= ModemState.TRAILING_RI
    return deltas


class ComPortServer:
    """Serves one telnet/RFC 2217 consumer on `stream` for `session`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        session: Session,
        *,
        peer: str,
        modem_poll_interval_s: float = MODEM_POLL_INTERVAL_S,
        drain_extra_s: float = 2.0,
    ) -> None:
        self.stream = stream
        self.session = session
        self.peer = peer
        self.name = session.service.name
        self.modem_poll_interval_s = modem_poll_interval_s
        self.drain_extra_s = drain_extra_s
        self.conn = TelnetConnection(Role.SERVER, accept_local=_ACCEPT_LOCAL, accept_remote=_ACCEPT_REMOTE)
        self.modemstate_mask = DEFAULT_MODEMSTATE_MASK
        self.linestate_mask = DEFAULT_LINESTATE_MASK
        self.signature = f"redirgate {self.name}".encode()[:200]
        self._send_lock = trio.Lock()
        self._flow_ok = trio.Event()
        self._flow_ok.set()
        self._comport_on = trio.Event()
        self._last_modem: int | None = None
        self._last_line = 0
        self._last_counters: tuple[int, int, int, int] | None = None
        self._warned_no_lines = False
        #: Malformed or refused parts seen (for tests and stats).
        self.refusals = 0

    # -- lifetime ----------------------------------------------------------

    async def run(self) -> None:
        """Until the consumer ends (EOF or a broken connection) or the session is cancelled."""
        offers = b"".join(
            (
                self.conn.request(Option.ECHO, local=True),
                self.conn.request(Option.SGA, local=True),
                self.conn.request(Option.SGA, local=False),
                self.conn.request(Option.BINARY, local=True),
                self.conn.request(Option.BINARY, local=False),
                self.conn.request(Option.COM_PORT, local=False),
            )
        )
        try:
            await self._send(offers)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._consumer_to_port, nursery.cancel_scope)
                nursery.start_soon(self._port_to_consumer, nursery.cancel_scope)
                nursery.start_soon(self._notifier)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: connection to %s ended: %s", self.name, self.peer, str(exc) or type(exc).__name__)

    async def _send(self, raw: bytes) -> None:
        """Pending negotiation answers, then `raw`, as one write (one writer at a time)."""
        async with self._send_lock:
            out = self._take_negotiation() + raw
            if out:
                await self.stream.send_all(out)

    def _take_negotiation(self) -> bytes:
        out = self.conn.data_to_send()
        for i in range(0, len(out) - 2, 3):  # the outbox holds 3-byte answers only
            if out[i] == IAC and out[i + 1] in (WONT, DONT):
                option = out[i + 2]
                accepted = _ACCEPT_LOCAL if out[i + 1] == WONT else _ACCEPT_REMOTE
                if option not in accepted:
                    self.refusals += 1
                    log.info(
                        "%s: refused telnet option %d asked for by %s (not supported)", self.name, option, self.peer
                    )
        return out

    async def _consumer_to_port(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await self.stream.receive_some(RECEIVE_BYTES)
                self.conn.receive_data(data)
                if await self._handle_events():
                    break
                await self._send(b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: %s went away: %s", self.name, self.peer, str(exc) or type(exc).__name__)
        else:
            await self.session.drain(self.drain_extra_s)
        scope.cancel()

    async def _handle_events(self) -> bool:
        """Process every buffered event; True once the consumer's EOF is reached."""
        while True:
            try:
                event = self.conn.next_event()
            except ComPortValueError as exc:
                self._refused(exc.reason)
                if exc.command is not None:
                    await self._answer_current(ComPortCommand(exc.command))
                continue
            except RemoteProtocolError as exc:
                self._refused(exc.reason)
                continue
            if event is NEED_DATA:
                return False
            if event is CLOSED:
                return True
            if isinstance(event, Data):
                await self.session.write(event.data)
            elif isinstance(event, ComPort):
                await self._comport(event.command, event.value)
            elif isinstance(event, Command):
                await self._command(event.code)
            elif isinstance(event, OptionChanged):
                log.debug(
                    "%s: %s telnet option %d %s",
                    self.name,
                    "our" if event.local else "peer's",
                    event.option,
                    event.enabled,
                )
                if event.option == Option.COM_PORT and event.enabled:
                    self._comport_on.set()
            elif isinstance(event, Subnegotiation):
                self._refused(f"subnegotiation of unsupported option {event.option} ignored")

    def _refused(self, reason: str) -> None:
        self.refusals += 1
        log.warning("%s: from %s: %s (skipped; the connection goes on)", self.name, self.peer, reason)

    async def _command(self, code: int) -> None:
        if code == Cmd.BREAK:
            log.info("%s: telnet BREAK from %s", self.name, self.peer)
            try:
                await self.session.send_break(TELNET_BREAK_S)
            except SettingError as exc:
                self._refused(f"BREAK: {exc.reason}")
        elif code not in (Cmd.NOP, Cmd.DATA_MARK, Cmd.GO_AHEAD):
            log.debug("%s: ignored telnet command %d from %s", self.name, code, self.peer)

    # -- COM-PORT commands ---------------------------------------------------

    async def _reply(self, command: ComPortCommand, value: int | bytes | None) -> None:
        await self._send(self.conn.send_comport(command, value))

    def _apply(self, what: str, **changes: object) -> None:
        try:
            self.session.apply(**changes)
        except SettingError as exc:
            self._refused(f"{what} refused, keeping {self.session.settings.describe()}: {exc.reason}")

    async def _comport(self, command: ComPortCommand, value: int | bytes | None) -> None:
        C = ComPortCommand
        if command == C.SIGNATURE:
            if value == b"":
                await self._reply(C.SIGNATURE, self.signature)
            else:
                log.info("%s: %s signature: %r", self.name, self.peer, value)
            return
        if command == C.FLOWCONTROL_SUSPEND:
            if self._flow_ok.is_set():
                self._flow_ok = trio.Event()
            return
        if command == C.FLOWCONTROL_RESUME:
            self._flow_ok.set()
            return
        assert isinstance(value, int) or value is None
        if command == C.SET_BAUDRATE and value:
            self._apply(f"baud rate {value}", baud=value)
        elif command == C.SET_DATASIZE and value:
            self._apply(f"data size {value}", data_bits=value)
        elif command == C.SET_PARITY and value:
            self._apply(f"parity {Parity(value).name}", parity=_RFC_TO_PARITY[Parity(value)])
        elif command == C.SET_STOPSIZE and value:
            self._apply(f"stop size {StopSize(value).name}", stop_bits=_RFC_TO_STOP[StopSize(value)])
        elif command == C.SET_CONTROL:
            await self._reply(C.SET_CONTROL, self._control(Control(value or 0)))
            return
        elif command == C.SET_LINESTATE_MASK and value is not None:
            self.linestate_mask = value
        elif command == C.SET_MODEMSTATE_MASK and value is not None:
            self.modemstate_mask = value
        elif command == C.PURGE_DATA and value is not None:
            self.session.purge(rx=value in (Purge.RX, Purge.BOTH), tx=value in (Purge.TX, Purge.BOTH))
            await self._reply(C.PURGE_DATA, value)
            return
        elif command == C.NOTIFY_MODEMSTATE:
            await self._notify_modem(force=True)
            return
        elif command == C.NOTIFY_LINESTATE:
            await self._reply(C.NOTIFY_LINESTATE, self._line_state() & self.linestate_mask)
            return
        await self._answer_current(command)

    async def _answer_current(self, command: ComPortCommand) -> None:
        """Answer `command` with the value now in force (a query, a change, a refusal)."""
        s: LineSettings = self.session.settings
        C = ComPortCommand
        answers: dict[ComPortCommand, int] = {
            C.SET_BAUDRATE: s.baud,
            C.SET_DATASIZE: s.data_bits,
            C.SET_PARITY: _PARITY_TO_RFC[s.parity],
            C.SET_STOPSIZE: _STOP_TO_RFC[s.stop_bits],
            C.SET_CONTROL: self._flow(s),
            C.SET_LINESTATE_MASK: self.linestate_mask,
            C.SET_MODEMSTATE_MASK: self.modemstate_mask,
        }
        if command in answers:
            await self._reply(command, answers[command])

    @staticmethod
    def _flow(s: LineSettings, *, inbound: bool = False) -> Control:
        if s.rtscts:
            return Control.INBOUND_FLOW_HARDWARE if inbound else Control.FLOW_HARDWARE
        if s.xonxoff:
            return Control.INBOUND_FLOW_XONXOFF if inbound else Control.FLOW_XONXOFF
        return Control.INBOUND_FLOW_NONE if inbound else Control.FLOW_NONE

    def _control(self, value: Control) -> Control:
        """Carry out one SET-CONTROL; returns the answer (the state now)."""
        session = self.session
        K = Control
        if value in (
            K.FLOW_NONE,
            K.FLOW_XONXOFF,
            K.FLOW_HARDWARE,
            K.INBOUND_FLOW_NONE,
            K.INBOUND_FLOW_XONXOFF,
            K.INBOUND_FLOW_HARDWARE,
        ):
            hardware = value in (K.FLOW_HARDWARE, K.INBOUND_FLOW_HARDWARE)
            software = value in (K.FLOW_XONXOFF, K.INBOUND_FLOW_XONXOFF)
            self._apply(f"flow control {value.name}", rtscts=hardware, xonxoff=software)
        elif value in (K.FLOW_DCD, K.FLOW_DSR, K.INBOUND_FLOW_DTR):
            self._refused(f"{value.name} flow control does not exist on Linux ttys")
        elif value in (K.BREAK_ON, K.BREAK_OFF):
            try:
                session.set_break(value == K.BREAK_ON)
            except SettingError as exc:
                session.break_on = False
                self._refused(f"BREAK: {exc.reason}")
        elif value in (K.DTR_ON, K.DTR_OFF, K.RTS_ON, K.RTS_OFF):
            on = value in (K.DTR_ON, K.RTS_ON)
            setter = session.set_dtr if value in (K.DTR_ON, K.DTR_OFF) else session.set_rts
            try:
                setter(on)
            except SettingError as exc:
                if not SerialPort.unsupported(exc):
                    self._refused(f"{value.name}: {exc.reason}")
                    if value in (K.DTR_ON, K.DTR_OFF):
                        session.dtr = None
                    else:
                        session.rts = None
                elif not self._warned_no_lines:
                    self._warned_no_lines = True
                    log.info("%s: the tty has no modem-control lines: DTR/RTS are acknowledged, not applied", self.name)
        # The answer: the state in force for the group the command belongs to.
        if value in (
            K.QUERY_INBOUND_FLOW,
            K.INBOUND_FLOW_NONE,
            K.INBOUND_FLOW_XONXOFF,
            K.INBOUND_FLOW_HARDWARE,
            K.INBOUND_FLOW_DTR,
        ):
            return self._flow(session.settings, inbound=True)
        if value in (K.QUERY_BREAK, K.BREAK_ON, K.BREAK_OFF):
            return K.BREAK_ON if session.break_on else K.BREAK_OFF
        if value in (K.QUERY_DTR, K.DTR_ON, K.DTR_OFF):
            return K.DTR_ON if self._line(termios.TIOCM_DTR, session.dtr) else K.DTR_OFF
        if value in (K.QUERY_RTS, K.RTS_ON, K.RTS_OFF):
            return K.RTS_ON if self._line(termios.TIOCM_RTS, session.rts) else K.RTS_OFF
        return self._flow(session.settings)

    def _line(self, tiocm: int, requested: bool | None) -> bool:
        lines = self.session.modem_lines()
        if lines is not None:
            return bool(lines & tiocm)
        return bool(requested)  # no modem lines (or the port is closed): what was asked

    # -- notifications -------------------------------------------------------

    def _line_state(self) -> int:
        session = self.session
        state = 0
        if session.rx_pending:
            state |= LineState.DATA_READY
        if session.tx_idle:
            state |= LineState.TX_HOLDING_EMPTY | LineState.TX_SHIFT_EMPTY
        counters = session.error_counters()
        if counters is not None:
            if self._last_counters is not None:
                for old, new, bit in zip(
                    self._last_counters,
                    counters,
                    (LineState.FRAMING_ERROR, LineState.OVERRUN_ERROR, LineState.PARITY_ERROR, LineState.BREAK_DETECT),
                    strict=True,
                ):
                    if new != old:
                        state |= bit
            self._last_counters = counters
        return state

    async def _notify_modem(self, *, force: bool = False) -> None:
        state = modem_state(self.session.modem_lines())
        last = self._last_modem
        if last is not None and state == last and not force:
            return
        value = (state | modem_deltas(last or 0, state)) & self.modemstate_mask
        self._last_modem = state
        if force or last is None or value:
            await self._reply(ComPortCommand.NOTIFY_MODEMSTATE, value)

    async def _notifier(self) -> None:
        """Once COM-PORT is agreed: the modem state now, then every change (masked)."""
        await self._comport_on.wait()
        while True:
            await self._notify_modem()
            if self.linestate_mask:
                line = self._line_state() & self.linestate_mask
                if line != self._last_line:
                    self._last_line = line
                    await self._reply(ComPortCommand.NOTIFY_LINESTATE, line)
            await trio.sleep(self.modem_poll_interval_s)

    async def _port_to_consumer(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await self.session.receive_some(RECEIVE_BYTES)
                await self._flow_ok.wait()  # FLOWCONTROL-SUSPEND from the client
                await self._send(self.conn.send_data(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s: %s stopped reading: %s", self.name, self.peer, str(exc) or type(exc).__name__)
        scope.cancel()
