"""The client's `gateway` may list several gateways of a cluster, tried in turn (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from redirgate.cli.lab import make_pki, write_client_config
from redirgate.client.config import ConfigError, load_client_config
from redirgate.client.inventory import DeviceInventory
from redirgate.client.tunnel import TunnelClient


def _with_gateway(tmp_path: Path, value: str) -> Path:
    make_pki(tmp_path)
    path = write_client_config(tmp_path, 7443)
    path.write_text(path.read_text().replace('gateway = "127.0.0.1:7443"', f"gateway = {value}"))
    return path


def test_a_list_of_gateways_is_tried_in_turn_then_the_learned_ones(tmp_path: Path) -> None:
    config = load_client_config(_with_gateway(tmp_path, '["gw-a:7443", "[::1]:7444"]'))
    assert (config.gateway_host, config.gateway_port) == ("gw-a", 7443)
    assert config.more_gateways == (("::1", 7444),)
    client = TunnelClient(config, DeviceInventory(config.export))
    client.learned = ("gw-a:7443", "10.0.0.3:7443")  # a configured one is not tried twice
    assert client.addresses() == [
        ("gw-a", 7443, config.server_name),
        ("::1", 7444, config.server_name),
        ("10.0.0.3", 7443, "10.0.0.3"),  # a learned node is checked against its own name
    ]


@pytest.mark.parametrize(("value", "said"), [('["gw-a:7443", "gw-b"]', "HOST:PORT"), ('["gw-a:x"]', "no valid port")])
def test_a_bad_entry_is_named(tmp_path: Path, value: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_client_config(_with_gateway(tmp_path, value))
    assert said in str(info.value) and "client.gateway" in str(info.value)
