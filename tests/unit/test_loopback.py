from __future__ import annotations

import ipaddress
from pathlib import Path

from envkit.loopback import AddressBook, candidates


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
