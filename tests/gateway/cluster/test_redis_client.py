"""The trio Redis client against a real redis-server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from redirgate.cli.lab import GATEWAY_NAME, make_pki
from redirgate.gateway import pki
from redirgate.gateway.cluster.redis import RedisError, RedisUrl, open_redis, open_subscription, tls_context
from tests.support.redis_server import RedisServer, free_port, running_redis


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("redis://h:7000/3", RedisUrl("h", 7000, 3)),
        ("redis://h", RedisUrl("h", 6379, 0)),
        ("rediss://:p%40ss@h:1/0", RedisUrl("h", 1, 0, None, "p@ss", True)),
        ("redis://user:pw@[::1]:6380/2", RedisUrl("::1", 6380, 2, "user", "pw")),
    ],
)
def test_url(text: str, parsed: RedisUrl) -> None:
    assert RedisUrl.parse(text) == parsed


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("http://h:1/0", "scheme"),
        ("redis://h:99999/0", "port"),
        ("redis://:1/0", "no host"),
        ("redis://h:1/x", "database"),
        ("redis://h:1/0?db=2", "query"),
    ],
)
def test_bad_url_says_why(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        RedisUrl.parse(text)


def test_password_never_shown() -> None:
    url = RedisUrl.parse("redis://:hunter2@h:1/0")
    assert "hunter2" not in str(url)
    with pytest.raises(ValueError) as caught:
        RedisUrl.parse("redis://:hunter2@h:1/x")
    assert "hunter2" not in str(caught.value)


async def test_commands_pipeline_and_expiry(redis_server: RedisServer) -> None:
    url = RedisUrl.parse(redis_server.url.replace("/0", "/4"))
    async with open_redis(url) as redis:
        assert await redis.command("SET", "k", b"v\x00", "EX", 30) == "OK"
        assert await redis.command("GET", "k") == b"v\x00"
        assert 0 < await redis.command("TTL", "k") <= 30  # type: ignore[operator]  # an int reply
        replies = await redis.pipeline([("INCR", "n"), ("INCR", "n"), ("HSET", "k", "f", "1"), ("GET", "n")])
        assert replies[:2] == [1, 2] and replies[3] == b"2"
        assert "WRONGTYPE" in str(replies[2])  # an error reply in a pipeline is a value
        with pytest.raises(RedisError, match="WRONGTYPE"):
            await redis.command("HSET", "k", "f", "1")
        assert await redis.command("CLIENT", "INFO") is not None
        info = await redis.command("CLIENT", "INFO")
        assert isinstance(info, bytes) and b"db=4" in info  # SELECT on connect


async def test_wrong_password_is_one_error(redis_server: RedisServer) -> None:
    url = RedisUrl.parse(f"redis://:wrong@127.0.0.1:{redis_server.port}/0")
    with pytest.raises(RedisError, match=r"WRONGPASS|invalid"):
        async with open_redis(url):
            pass
    url = RedisUrl.parse(f"redis://127.0.0.1:{redis_server.port}/0")
    async with open_redis(url) as redis:
        with pytest.raises(RedisError, match="NOAUTH"):
            await redis.command("GET", "k")


async def test_pubsub_delivers_after_subscribe(redis_server: RedisServer) -> None:
    url = RedisUrl.parse(redis_server.url)
    async with open_subscription(url, ["a", "b"]) as sub, open_redis(url) as redis:
        assert await redis.command("PUBLISH", "b", b"hello") == 1
        await redis.command("PUBLISH", "a", b"world")
        got = [await sub.receive(), await sub.receive()]
        assert got == [("b", b"hello"), ("a", b"world")]


async def test_refused_and_lost_are_redis_errors(tmp_path: Path) -> None:
    with pytest.raises(RedisError, match="cannot connect"):
        async with open_redis(RedisUrl("127.0.0.1", free_port())):
            pass
    with running_redis(tmp_path / "r") as server:
        url = RedisUrl.parse(server.url)
        async with open_redis(url) as redis, open_subscription(url, ["c"]) as sub:
            await redis.command("PING")
            server.stop()
            with pytest.raises(RedisError, match=r"closed|lost"):
                await redis.command("PING")
            with pytest.raises(RedisError, match="earlier failure"):
                await redis.command("PING")
            with pytest.raises(RedisError, match=r"closed|lost"):
                await sub.receive()
        await trio.lowlevel.checkpoint()


async def test_rediss_checks_the_servers_certificate(tmp_path: Path) -> None:
    make_pki(tmp_path)
    base = tmp_path / "pki"
    gw = pki.gateway_dir(base, GATEWAY_NAME)
    cert, key, ca = gw / "server-cert.pem", gw / "server-key.pem", base / "ca-cert.pem"
    with running_redis(tmp_path / "r", password="pw", tls=(cert, key, ca)) as server:
        url = RedisUrl.parse(server.url)
        assert url.tls
        async with open_redis(url, context=tls_context(url, ca)) as redis:
            assert await redis.command("PING") == "PONG"
        # the system's authorities do not know our CA: refused, one error naming why
        with pytest.raises(RedisError, match="TLS refused"):
            async with open_redis(url, context=tls_context(url, None)):
                pass
        # the name checked is the URL's host: a name the certificate does not carry is refused
        other = RedisUrl("localhost.invalid", url.port, tls=True)
        with pytest.raises(RedisError, match="TLS refused"):
            async with open_redis(url, context=tls_context(other, ca)):
                pass
