"""A valid inventory document for the inventory tests to start from and break (no tests here)."""

from __future__ import annotations

import copy
from typing import Any

IMAGE = {
    "file": "web.img",
    "size": 4096 * 12,
    "sha256": "a" * 64,
    "data_size": 4096 * 10,
    "hash_offset": 4096 * 10,
    "root_hash": "b" * 64,
    "salt": "c" * 64,
}


def persona(name: str = "web", **changes: Any) -> dict[str, Any]:
    doc = {
        "name": name,
        "image": dict(IMAGE),
        "ceilings": {"cpu_max": "50000 100000", "memory_max": 256 << 20, "pids_max": 64},
        "command": ["/bin/httpd", "-f"],
        "user": {"uid": 1000, "gid": 1000},
        "network": {
            "address": "10.0.0.2/24",
            "gateway": "10.0.0.1",
            "egress": [{"dest": "10.0.0.1/32", "proto": "tcp", "port": 80}],
        },
        "seccomp": "network-service",
        "mounts": [{"source": "web/data", "target": "/data", "rw": True, "exec": False}],
        "environment": {"LANG": "C.UTF-8"},
        "restart": {"policy": "on-failure", "max_restarts": 5, "backoff": 2},
        "shell": "front",
        "purge": 0,
    }
    doc.update(changes)
    return doc


def document(**changes: Any) -> dict[str, Any]:
    doc = {
        "format": "spine-inventory/1",
        "version": 7,
        "created": 1_700_000_000,
        "expires": 1_700_000_000 + 86_400,
        "personas": [persona(), persona("batch", network="none", seccomp="batch", shell=None,
                                        mounts=[])],
        "shells": [{"name": "front", "budget": {"cpu_max": "100000 100000",
                                                "memory_max": 1 << 30, "pids_max": 256}}],
    }
    doc.update(changes)
    return copy.deepcopy(doc)
