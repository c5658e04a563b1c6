"""Hypothesis strategies for every usbredir message a host or a guest may
send, with fields anywhere in their wire range (tests/proto: the connection
against itself, the host-stream walker)."""

from __future__ import annotations

from hypothesis import strategies as st

from redirgate.proto.usbredir import messages as m

ep_in = st.integers(0x80, 0x8F)
ep_out = st.integers(0x00, 0x0F)
u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ids = st.integers(0, 2**64 - 1)
arr8 = st.tuples(*[u8] * 32)
arr16 = st.tuples(*[u16] * 32)
arr32 = st.tuples(*[u32] * 32)


def guest_messages() -> st.SearchStrategy[m.Message]:
    """Every message type a guest may send, with valid fields."""
    small = st.binary(max_size=300)
    return st.one_of(
        st.builds(m.Reset, id=ids),
        st.builds(m.SetConfiguration, u8, id=ids),
        st.builds(m.GetConfiguration, id=ids),
        st.builds(m.SetAltSetting, u8, u8, id=ids),
        st.builds(m.GetAltSetting, u8, id=ids),
        st.builds(m.StartIsoStream, u8, u8, u8, id=ids),
        st.builds(m.StopIsoStream, u8, id=ids),
        st.builds(m.StartInterruptReceiving, ep_in, id=ids),
        st.builds(m.StopInterruptReceiving, ep_in, id=ids),
        st.builds(m.AllocBulkStreams, u32, u32, id=ids),
        st.builds(m.FreeBulkStreams, u32, id=ids),
        st.builds(m.CancelDataPacket, id=ids),
        st.builds(m.FilterReject, id=ids),
        st.builds(m.FilterFilter, st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=40), id=ids),
        st.builds(m.DeviceDisconnectAck, id=ids),
        st.builds(m.StartBulkReceiving, u32, st.integers(0, 2**27), ep_in, u8, id=ids),
        st.builds(m.StopBulkReceiving, u32, ep_in, id=ids),
        # control: IN request has no data; OUT request carries `length` bytes
        st.builds(lambda *a, id: m.ControlPacket(*a, id=id), ep_in, u8, u8, u8, u16, u16, u16, id=ids),
        small.flatmap(
            lambda d: st.builds(
                lambda *a, id: m.ControlPacket(*a, len(d), id=id, data=d), ep_out, u8, u8, u8, u16, u16, id=ids
            )
        ),
        st.builds(
            lambda e, s, n, sid, id: m.BulkPacket(e, s, n, sid, id=id), ep_in, u8, st.integers(0, 2**27), u32, id=ids
        ),
        small.flatmap(
            lambda d: st.builds(
                lambda e, s, sid, id: m.BulkPacket(e, s, len(d), sid, id=id, data=d), ep_out, u8, u32, id=ids
            )
        ),
        small.flatmap(
            lambda d: st.builds(lambda e, s, id: m.IsoPacket(e, s, len(d), id=id, data=d), ep_out, u8, id=ids)
        ),
        small.flatmap(
            lambda d: st.builds(lambda e, s, id: m.InterruptPacket(e, s, len(d), id=id, data=d), ep_out, u8, id=ids)
        ),
    )


def host_messages() -> st.SearchStrategy[m.Message]:
    small = st.binary(max_size=300)
    return st.one_of(
        st.builds(m.DeviceConnect, u8, u8, u8, u8, u16, u16, u16, id=ids),
        st.builds(m.DeviceDisconnect, id=ids),
        st.builds(m.InterfaceInfo, st.integers(0, 32), arr8, arr8, arr8, arr8, id=ids),
        st.builds(m.EpInfo, arr8, arr8, arr8, arr16, arr32, id=ids),
        st.builds(m.ConfigurationStatus, u8, u8, id=ids),
        st.builds(m.AltSettingStatus, u8, u8, u8, id=ids),
        st.builds(m.IsoStreamStatus, u8, u8, id=ids),
        st.builds(m.InterruptReceivingStatus, u8, ep_in, id=ids),
        st.builds(m.BulkStreamsStatus, u32, u32, u8, id=ids),
        st.builds(m.BulkReceivingStatus, u32, ep_in, u8, id=ids),
        st.builds(m.FilterFilter, st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=40), id=ids),
        small.flatmap(
            lambda d: st.builds(
                lambda *a, id: m.ControlPacket(*a, len(d), id=id, data=d), ep_in, u8, u8, u8, u16, u16, id=ids
            )
        ),
        st.builds(lambda *a, id: m.ControlPacket(*a, id=id), ep_out, u8, u8, u8, u16, u16, u16, id=ids),
        small.flatmap(
            lambda d: st.builds(
                lambda e, s, sid, id: m.BulkPacket(e, s, len(d), sid, id=id, data=d), ep_in, u8, u32, id=ids
            )
        ),
        st.builds(
            lambda e, s, n, sid, id: m.BulkPacket(e, s, n, sid, id=id), ep_out, u8, st.integers(0, 2**27), u32, id=ids
        ),
        small.flatmap(
            lambda d: st.builds(lambda e, s, id: m.IsoPacket(e, s, len(d), id=id, data=d), ep_in, u8, id=ids)
        ),
        small.flatmap(
            lambda d: st.builds(lambda e, s, id: m.InterruptPacket(e, s, len(d), id=id, data=d), ep_in, u8, id=ids)
        ),
        st.builds(lambda e, s, n, id: m.InterruptPacket(e, s, n, id=id), ep_out, u8, u16, id=ids),
        small.flatmap(
            lambda d: st.builds(
                lambda sid, e, s, id: m.BufferedBulkPacket(sid, len(d), e, s, id=id, data=d), u32, ep_in, u8, id=ids
            )
        ),
    )
