"""The ElastiCache probe's second step (issue 19): once boto3 says the replication group is
available, ``AUTH`` + ``PING`` on its primary endpoint when that is reachable from here. The
endpoint is a real ``redis-server`` on loopback; the describe call is a stand-in returning it
(moto's endpoints are names that resolve nowhere)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from envkit.health.engine import ProbeError, TransientError
from envkit.kvwire import KvAddress
from envkit.providers.aws.probes import ElastiCacheProbe

pytestmark = pytest.mark.integration
PASSWORD = "tok-" + "x" * 20


class Describe:
    """Answers describe_replication_groups with one available group at ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def describe_replication_groups(self, **_: Any) -> dict[str, Any]:
        endpoint = {"Address": self.host, "Port": self.port}
        return {"ReplicationGroups": [{"Status": "available",
                                       "NodeGroups": [{"PrimaryEndpoint": endpoint}]}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    config = (f"bind 127.0.0.1\nport {port}\nsave \"\"\nappendonly no\nrequirepass {PASSWORD}\n"
              "daemonize no\n")
    proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None
        proc.stdin.write(config.encode())
        proc.stdin.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
                time.sleep(0.01)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def probe(port: int, password: str, **kwargs: Any) -> ElastiCacheProbe:
    return ElastiCacheProbe("envkit-pr-1-redis", url=f"redis://:{password}@127.0.0.1:{port}",
                            client=Describe("127.0.0.1", port), **kwargs)


def test_available_and_reachable_means_auth_and_ping(redis_port: int) -> None:
    probe(redis_port, PASSWORD).check()


def test_a_wrong_token_is_fatal_and_never_shown(redis_port: int) -> None:
    with pytest.raises(ProbeError) as err:
        probe(redis_port, "wrong-token-123").check()
    assert not isinstance(err.value, TransientError)
    assert "wrong-token-123" not in str(err.value)


def test_an_unreachable_endpoint_passes_on_the_status_unless_required() -> None:
    port = free_port()  # nothing listens there
    probe(port, PASSWORD).check()
    with pytest.raises(TransientError):
        probe(port, PASSWORD, require_reachable=True, reach_timeout=0.5).check()


def test_rediss_urls_ask_for_tls() -> None:
    assert KvAddress.from_url("rediss://:t@cache.example:6380").tls is True
    assert KvAddress.from_url("redis://:t@127.0.0.1").tls is False
