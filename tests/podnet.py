"""What the test pods' processes share (tests/merbridge_pod.py, tests/sandbox_pod.py): a
connection's SO_ORIGINAL_DST, a call made as another uid, a plain client."""

from __future__ import annotations

import encodings.idna  # noqa: F401  (imported before setuid: a pyenv Python cannot load it after)
import json
import os
import socket
import struct
from typing import Any

SO_ORIGINAL_DST = 80


def original_dst(conn: socket.socket) -> str | None:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, ip = struct.unpack("!2xH4s8x", raw)
    return f"{socket.inet_ntoa(ip)}:{port}"


def as_uid(uid: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a child process running as ``uid`` (same cgroup and network); what it
    returned, or the error it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgid(uid)
            os.setuid(uid)
            out = fn(*args)
        except Exception as exc:  # reported, as the container's exit would be
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)


def fetch(ip: str, port: int, source: str | None = None) -> Any:
    """Connect, read until the server closes; its JSON answer (or text)."""
    s = socket.socket()
    s.settimeout(5)
    if source:
        s.bind((source, 0))
    s.connect((ip, port))
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    return json.loads(data) if data.startswith(b"{") else data.decode()
