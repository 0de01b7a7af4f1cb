"""ingest's buffered broker socket: paho's small reads come from memory, in stream order."""

from __future__ import annotations

import socket

import pytest

from ingest.mqtt_source import _BufferedSocket


def test_small_reads_come_from_one_chunk_in_order() -> None:
    a, b = socket.socketpair()
    try:
        stream = bytes(range(256)) * 40
        a.sendall(stream)
        buffered = _BufferedSocket(b)
        got = bytearray()
        sizes = [1, 1, 3, 100, 7, 1000]
        i = 0
        while len(got) < len(stream):
            got += buffered.recv(sizes[i % len(sizes)])
            i += 1
        assert bytes(got) == stream
        assert buffered.pending() == 0
    finally:
        a.close()
        b.close()


def test_pending_counts_what_is_buffered_and_eof_is_empty() -> None:
    a, b = socket.socketpair()
    buffered = _BufferedSocket(b)
    a.sendall(b"0123456789")
    assert buffered.recv(1) == b"0"
    assert buffered.pending() == 9
    assert buffered.recv(4) == b"1234"
    assert buffered.recv(100) == b"56789"
    a.close()
    assert buffered.recv(1) == b""
    b.close()


def test_a_non_blocking_read_with_nothing_buffered_raises_as_the_socket_does() -> None:
    a, b = socket.socketpair()
    b.setblocking(False)
    buffered = _BufferedSocket(b)
    with pytest.raises(BlockingIOError):
        buffered.recv(1)
    assert buffered.fileno() == b.fileno()
    a.close()
    b.close()
