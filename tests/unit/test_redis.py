"""Redis per pipeline (issue 19), without processes: the RESP client and the probe against a
fake server on a socket, the server's configuration, the record entry, the plan's rule, spec
placeholders and redaction."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envkit.errors import ConfigError, PrerequisiteError
from envkit.health import ProbeError, TransientError
from envkit.health.keyvalue import RedisProbe
from envkit.kvwire import KvAddress, KvError, connect, encode
from envkit.outputs import complete, render_env, render_json
from envkit.plan import Plan
from envkit.providers.local import cache_server
from envkit.providers.local.cache_server import CacheEntry, password_hash
from envkit.redact import MASK, secret_values
from envkit.settings import Settings
from envkit.spec_model import RedisSpec
from envkit.spec_parse import parse_spec_text

URL = "redis://envkit:s3cr3t-pass@127.0.0.1:{port}/0"


class FakeRedis:
    """A one-thread RESP server: ``answer(args)`` gives the raw reply for each command."""

    def __init__(self, answer: Callable[[list[bytes]], bytes]) -> None:
        self.answer = answer
        self.seen: list[list[bytes]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as reader:
                while True:
                    head = reader.readline()
                    if not head:
                        break
                    args = []
                    for _ in range(int(head[1:])):
                        size = int(reader.readline()[1:])
                        args.append(reader.read(size + 2)[:-2])
                    self.seen.append(args)
                    conn.sendall(self.answer(args))

    def close(self) -> None:
        self.sock.close()


def server_with(answer: Callable[[list[bytes]], bytes]) -> Iterator[FakeRedis]:
    fake = FakeRedis(answer)
    yield fake
    fake.close()


def redis_like(args: list[bytes]) -> bytes:
    command = args[0].upper()
    if command == b"AUTH":
        ok = args[1:] == [b"envkit", b"s3cr3t-pass"]
        return b"+OK\r\n" if ok else b"-WRONGPASS invalid username-password pair\r\n"
    if command == b"PING":
        return b"+PONG\r\n"
    if command == b"GET":
        return b"$5\r\nhello\r\n"
    if command == b"MGET":
        return b"*2\r\n$1\r\na\r\n$-1\r\n"
    return b"-ERR unknown command\r\n"


@pytest.fixture
def fake() -> Iterator[FakeRedis]:
    yield from server_with(redis_like)


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert encode(["SET", "k", 12]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"


def test_url_parsing() -> None:
    address = KvAddress.from_url("redis://u:p%40ss@10.0.0.1:6390/3")
    assert (address.host, address.port, address.username, address.password, address.db) == (
        "10.0.0.1", 6390, "u", "p@ss", 3)
    assert "p@ss" not in repr(address)
    assert KvAddress.from_url("redis://h").port == 6379
    with pytest.raises(ValueError):
        KvAddress.from_url("postgresql://u:p@h/db")


def test_client_logs_in_and_reads_every_reply_kind(fake: FakeRedis) -> None:
    with connect(KvAddress.from_url(URL.format(port=fake.port))) as session:
        assert session.command("PING") == b"PONG"
        assert session.command("GET", "k") == b"hello"
        assert session.command("MGET", "a", "b") == [b"a", None]
        with pytest.raises(KvError) as err:
            session.command("NOPE")
        assert err.value.code == "ERR"
        assert session.pipeline([["PING"], ["GET", "x"]]) == [b"PONG", b"hello"]
    assert fake.seen[0] == [b"AUTH", b"envkit", b"s3cr3t-pass"]


def test_probe_passes_on_pong(fake: FakeRedis) -> None:
    RedisProbe(URL.format(port=fake.port)).check()


def test_probe_is_fatal_on_a_wrong_password_and_never_shows_it(fake: FakeRedis) -> None:
    url = f"redis://envkit:wrong-one@127.0.0.1:{fake.port}/0"
    with pytest.raises(ProbeError) as err:
        RedisProbe(url).check()
    assert "wrong" in str(err.value) and "wrong-one" not in str(err.value)
    assert MASK in str(err.value)


def test_probe_is_transient_while_loading_and_when_refused() -> None:
    for fake in server_with(lambda args: b"-LOADING Redis is loading the dataset\r\n"):
        with pytest.raises(TransientError):
            RedisProbe(URL.format(port=fake.port)).check()
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with pytest.raises(TransientError) as err:
        RedisProbe(URL.format(port=port)).check()
    assert "s3cr3t-pass" not in str(err.value)


def test_probe_is_fatal_without_auth_or_on_a_bad_url() -> None:
    for fake in server_with(lambda args: b"-NOAUTH Authentication required.\r\n"):
        with pytest.raises(ProbeError):
            RedisProbe(f"redis://127.0.0.1:{fake.port}").check()
    with pytest.raises(ProbeError):
        RedisProbe("http://example").check()


def entry(**changes: object) -> CacheEntry:
    values: dict[str, object] = {
        "binary": "/usr/bin/redis-server", "host": "127.4.5.6", "port": 6379,
        "dir": "/data/h-x/pr-1/redis",
    }
    values.update(changes)
    return CacheEntry(**values)  # type: ignore[arg-type]


def test_config_holds_the_hash_not_the_password_and_locks_the_server_down() -> None:
    password = "plain-text-password"
    text = entry().config(password_hash(password))
    assert password not in text
    assert f"#{password_hash(password)}" in text
    lines = text.splitlines()
    for expected in ("bind 127.4.5.6", "port 6379", "protected-mode yes", "set-proc-title no",
                     'save ""', "appendonly no", "maxmemory 64mb", "enable-debug-command no",
                     "enable-module-command no"):
        assert expected in lines
    assert "user default off resetpass nocommands" in lines
    (user,) = [line for line in lines if line.startswith("user envkit ")]
    for denied in ("-config", "-debug", "-module", "-shutdown", "-acl", "-save", "-bgsave",
                   "-replicaof", "-monitor", "-@admin"):
        assert denied in user.split()
    assert "appendonly yes" in entry(persistence=True).config("00").splitlines()


def test_argv_has_no_secret_and_names_the_pipeline_directory() -> None:
    argv = entry().argv()
    assert argv[:2] == ["/usr/bin/redis-server", "-"]  # the configuration comes from stdin
    assert "/data/h-x/pr-1/redis" in argv
    assert all("pass" not in arg and "#" not in arg for arg in argv)


def test_entry_round_trips_and_unreadable_entries_are_unset() -> None:
    resources: dict[str, object] = {"host": "127.1.1.1"}
    saved = entry(pid=42, persistence=True, maxmemory="1gb")
    saved.save(resources)
    assert CacheEntry.load(resources) == saved
    assert resources["host"] == "127.1.1.1"  # the provider's other keys are left as they were
    assert CacheEntry.load({}) is None
    assert CacheEntry.load({"redis": {"host": "x"}}) is None
    assert CacheEntry.load({"redis": "garbage"}) is None
    assert CacheEntry.load({"redis": {**saved.__dict__, "pid": True}}).pid is None  # type: ignore[union-attr]


def test_outputs_and_gone_without_a_server(tmp_path: Path) -> None:
    found = cache_server.outputs(entry(port=7001), "pw")
    assert found == {"REDIS_URL": "redis://envkit:pw@127.4.5.6:7001/0",
                     "REDIS_HOST": "127.4.5.6", "REDIS_PORT": "7001"}
    resources: dict[str, object] = {}
    assert cache_server.gone(resources) == []  # no server recorded: nothing is missing
    entry(dir=str(tmp_path)).save(resources)
    assert cache_server.gone(resources) == ["redis: its server (127.4.5.6:6379) is not running"]
    (tmp_path / "redis.pid").write_text("1\n")  # pid 1 does not name this folder: not ours
    assert cache_server.running_pid(tmp_path) is None
    assert cache_server.probes({}) == []
    assert [p.name for p in cache_server.probes(found)] == ["redis"]


def test_a_missing_redis_server_is_exit_2_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cache_server, "SEARCH_DIRS", (str(tmp_path),))
    assert cache_server.binary_for(None) is None  # not asked for: not looked for
    with pytest.raises(PrerequisiteError) as err:
        cache_server.binary_for(RedisSpec())
    assert err.value.exit_code == 2
    assert "apt-get install redis-server" in (err.value.hint or "")


def test_another_version_than_the_spec_names_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cache_server, "server_version", lambda binary: "7.0.15")
    cache_server.check_version(tmp_path, None)
    cache_server.check_version(tmp_path, "7")
    cache_server.check_version(tmp_path, "7.0")
    with pytest.raises(PrerequisiteError):
        cache_server.check_version(tmp_path, "6")
    with pytest.raises(PrerequisiteError):
        cache_server.check_version(tmp_path, "7.2")


def test_plan_rule_spec_then_setting_then_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.resolve({"home": tmp_path / "home"})
    assert Plan.build("pr-1", settings).redis is None
    assert Plan.build("pr-1", settings.with_(redis=True)).redis == RedisSpec()
    (tmp_path / "envkit.toml").write_text('[redis]\nmaxmemory = "1gb"\n')
    with_spec = Settings.resolve({"home": tmp_path / "home"})
    assert Plan.build("pr-1", with_spec).redis == RedisSpec(maxmemory="1gb")
    assert Plan.build("pr-1", with_spec.with_(redis=True)).redis == RedisSpec(maxmemory="1gb")


def test_redis_placeholders_need_a_redis_table() -> None:
    service = '[services.api]\ncommand = ["app"]\nenv = { CACHE = "{REDIS_URL}" }\n'
    spec = parse_spec_text("[redis]\n" + service)
    assert spec.redis == RedisSpec()
    assert spec.services[0].env["CACHE"] == "{REDIS_URL}"
    with pytest.raises(ConfigError) as err:
        parse_spec_text(service)
    assert "REDIS_URL" in str(err.value)


def test_redis_url_is_a_secret_in_every_format() -> None:
    outputs = complete(
        {"DATABASE_URL": "postgresql://u:dbpw@h:5432/d",
         "REDIS_URL": "redis://envkit:redispw@127.4.5.6:6379/0",
         "REDIS_HOST": "127.4.5.6", "REDIS_PORT": "6379"},
        pipeline_id="pr-1", provider="local",
    )
    assert list(outputs)[-3:] == ["REDIS_URL", "REDIS_HOST", "REDIS_PORT"]
    assert "redispw" not in render_json(outputs, show_secrets=False)
    assert "redis://envkit:********@127.4.5.6:6379/0" in render_json(outputs, show_secrets=False)
    env = render_env(outputs, show_secrets=False)
    assert "redispw" not in env and "REDIS_URL" in env.splitlines()[-1]  # named, not set
    assert "REDIS_PORT=6379" in env
    assert "redispw" in render_env(outputs, show_secrets=True)
    assert "redispw" in secret_values(outputs)


def test_dataset_cache_keys_are_validated_and_rendered() -> None:
    from envkit.seeding.cache_keys import CacheKeys, parse

    columns = {"users": ["id", "email", "city"]}
    (keys,) = parse([{"table": "users", "key": "user:{id}", "value": "{email}|{city}",
                      "rows": 3}], columns, "ds")
    assert keys == CacheKeys("users", "user:{id}", "{email}|{city}", 3, "id")
    assert keys.columns == ["id", "email", "city"]
    assert keys.render({"id": "7", "email": "a@b", "city": "X"}) == ("user:7", "a@b|X")
    assert parse(None, columns, "ds") == ()
    for bad in ({"table": "nope", "key": "k:{id}", "value": "v"},
                {"table": "users", "key": "k:{nope}", "value": "v"},
                {"table": "users", "key": "constant", "value": "v"},
                {"table": "users", "key": "k:{id}", "value": "v", "rows": 0},
                {"table": "users", "key": "k:{id}", "value": "v", "ttl": 5}):
        with pytest.raises(ConfigError):
            parse([bad], columns, "ds")


def test_the_default_dataset_warms_user_emails() -> None:
    from envkit.seeding.datasets import parse, shipped_root

    dataset = parse(shipped_root().joinpath("default"), "default")
    (keys,) = dataset.cache_keys
    assert (keys.table, keys.key, keys.order_by) == ("users", "user:{id}:email", "id")
