"""`[cluster]` in gateway.toml: read when present, nothing changes without it, one line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from redirgate.cli.lab import LabRoute, make_pki, write_gateway_config
from redirgate.gateway.cluster.redis import RedisUrl
from redirgate.gateway.config import ConfigErrors, load_config
from tests.support.gateway_configs import GOOD, write
from tests.support.services import redirgate

CLUSTER = """
[cluster]
redis = "redis://:pw@10.0.0.5:6380/2"
node = "gw-a"
advertise = "gw-a.example:7443"
"""


def test_without_cluster_nothing_changes(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).cluster is None


def test_cluster_table_loads(tmp_path: Path) -> None:
    cluster = load_config(write(tmp_path, GOOD + CLUSTER)).cluster
    assert cluster is not None
    assert cluster.redis == RedisUrl("10.0.0.5", 6380, 2, None, "pw")
    assert (cluster.node, cluster.advertise_host, cluster.advertise_port) == ("gw-a", "gw-a.example", 7443)
    assert (cluster.heartbeat_s, cluster.node_timeout_s) == (2.0, 6.0)


@pytest.mark.parametrize(
    ("change", "key", "said"),
    [
        (('redis = "redis://:pw@10.0.0.5:6380/2"\n', ""), "cluster.redis", "missing: write redis ="),
        (("redis://:pw@10.0.0.5:6380/2", "http://h:1/0"), "cluster.redis", "redis:// or rediss://"),
        (("redis://:pw@10.0.0.5:6380/2", "redis://:pw@h:1/db"), "cluster.redis", "must be a number"),
        (('node = "gw-a"\n', ""), "cluster.node", 'e.g. node = "gw-a"'),
        (('node = "gw-a"', 'node = "gw a"'), "cluster.node", "use letters"),
        (('advertise = "gw-a.example:7443"', 'advertise = "0.0.0.0:7443"'), "cluster.advertise", "wildcard"),
        (('advertise = "gw-a.example:7443"', 'advertise = "gw-a"'), "cluster.advertise", "HOST:PORT"),
        (('node = "gw-a"', 'node = "gw-a"\nheartbeat_s = 5'), "cluster.node_timeout_s", "twice heartbeat_s"),
        (('node = "gw-a"', 'node = "gw-a"\nredis_ca = "ca.pem"'), "cluster.redis_ca", "rediss:// only"),
        (('node = "gw-a"', 'node = "gw-a"\ncolour = 1'), "cluster.colour", "unknown key"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key_and_the_fix(
    tmp_path: Path, change: tuple[str, str], key: str, said: str
) -> None:
    text = GOOD + CLUSTER.replace(*change)
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, text))
    (problem,) = info.value.problems
    assert problem.key == key and said in problem.reason and "\n" not in str(problem)
    assert problem.line is not None and problem.line > GOOD.count("\n")
    assert "pw@" not in str(problem)  # the password is never printed


def test_gateway_check_shows_the_cluster_and_its_mistakes(tmp_path: Path) -> None:
    make_pki(tmp_path)
    good = write_gateway_config(tmp_path, [LabRoute("stick", "usb:1209:0001")])
    path = tmp_path / "cluster.toml"
    path.write_text(good.read_text() + CLUSTER)
    out = redirgate("gateway", "check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "cluster: node gw-a, advertised as gw-a.example:7443, Redis redis://:***@10.0.0.5:6380/2" in out.stdout
    path.write_text(good.read_text() + CLUSTER.replace('node = "gw-a"', 'node = ""'))
    out = redirgate("gateway", "check", "--config", str(path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "cluster.node" in out.stderr
