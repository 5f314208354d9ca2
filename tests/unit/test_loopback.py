from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

import pytest

from envkit.providers.local.loopback import AddressBook, candidates


def test_candidates_are_stable_private_loopback() -> None:
    first = list(candidates("pr-42"))
    assert first == list(candidates("pr-42"))
    assert len(set(first)) == len(first)
    for host in first:
        address = ipaddress.IPv4Address(host)
        assert address.is_loopback and host.split(".")[1] != "0"
    assert first[0] != next(candidates("pr-43"))


def test_reservations_are_exclusive_and_reusable(tmp_path: Path) -> None:
    book = AddressBook(tmp_path / "addr")
    a = book.reserve("h/a", "same")
    again = book.reserve("h/a", "same")
    assert a == again
    b = book.reserve("h/b", "same")  # same ID from another home: next candidate
    assert b.host != a.host
    assert book.owners() == {a.host: "h/a", b.host: "h/b"}
    book.release("h/a")
    assert book.held_by("h/a") == []
    assert book.held_by("h/b") == [b.host]


def test_a_reservation_is_never_seen_empty_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = AddressBook(tmp_path / "addr")
    seen: list[str] = []
    real_link = os.link

    def watching_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # Just before the reservation appears, its owner is already in the file being linked.
        seen.append(Path(src).read_text())
        assert not Path(dst).exists() or Path(dst).read_text()
        real_link(src, dst)

    monkeypatch.setattr(os, "link", watching_link)
    a = book.reserve("h/a", "pr-1")
    book.reserve("h/b", "pr-1")  # a taken name: link fails, the next candidate is used
    assert seen[0] == "h/a" and "h/b" in seen
    assert (book.folder / a.host).read_text() == "h/a"
    assert book.unfinished() == {}
    assert all(not p.name.startswith(".") for p in book.folder.iterdir())


def test_temporary_files_are_not_reservations(tmp_path: Path) -> None:
    book = AddressBook(tmp_path / "addr")
    book.folder.mkdir()
    (book.folder / ".tmp-123-abcd").write_text("h/killed")
    assert book.owners() == {}
    assert book.held_by("h/killed") == []
    assert book.unfinished() == {book.folder / ".tmp-123-abcd": 123}
    a = book.reserve("h/a", "pr-1")
    assert book.owners() == {a.host: "h/a"}


def test_without_hard_links_a_reservation_falls_back_to_exclusive_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    book = AddressBook(tmp_path / "addr")
    monkeypatch.setattr(os, "link", no_links)
    a = book.reserve("h/a", "pr-1")
    assert book.reserve("h/a", "pr-1") == a
    b = book.reserve("h/b", "pr-1")
    assert a.host != b.host
    assert book.owners() == {a.host: "h/a", b.host: "h/b"}
    assert book.unfinished() == {}


def test_a_port_in_time_wait_is_free_and_a_listening_one_is_not() -> None:
    import errno
    import socket

    from envkit.providers.local.loopback import bind_error

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert bind_error("127.0.0.1", port) == errno.EADDRINUSE
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    client.close()
    server.close()
    assert bind_error("127.0.0.1", port) is None
