"""The signed inventory (format ``spine-inventory/1``): what bay0 may run, and how.

Pure code: takes bytes and values, never opens files or reads the clock. The schema,
its limits and their rationale are in docs/implementation/format-inventory.md.
Every object keeps the fields it does not know (``extra``) so a document written by
a newer minor version round-trips unchanged; an unknown *major* version is refused.

Validation errors are ``ValidationError`` with one line that names the persona (or
shell) and the field, e.g. ``persona web: mounts[0]: exec: exec on a read-only mount``.

Modules: ``_base`` (limits, checkers), ``fields`` (image record, ceilings, network,
mounts), ``persona`` (persona, shell), ``document`` (the inventory, parsing),
``verify`` (signature, rollback, expiry, image identity). Import from here.
"""

from __future__ import annotations

from bay0.formats.inventory._base import (
    BLOCK,
    CPU_PERIOD_DEFAULT,
    EGRESS_PROTOCOLS,
    FORMAT,
    FORMAT_MAJOR,
    IDENTITY_FIELDS,
    MAX_DOCUMENT_BYTES,
    O1_IDENTITY_FIELDS,
    RESERVED_PERSIST_DIRS,
    RESERVED_TARGETS,
    RESTART_POLICIES,
    SECCOMP_PROFILES,
    context,
)
from bay0.formats.inventory.document import Inventory, check_format, parse_inventory
from bay0.formats.inventory.fields import (
    Ceilings,
    EgressRule,
    ImageRecord,
    Mount,
    Network,
    check_mount_source,
    check_mount_target,
    parse_cpu_max,
)
from bay0.formats.inventory.persona import Persona, Restart, Shell, User
from bay0.formats.inventory.verify import check_identity, verify_inventory, verify_signed

__all__ = [
    "BLOCK", "CPU_PERIOD_DEFAULT", "EGRESS_PROTOCOLS", "FORMAT", "FORMAT_MAJOR",
    "IDENTITY_FIELDS", "MAX_DOCUMENT_BYTES", "O1_IDENTITY_FIELDS", "RESERVED_PERSIST_DIRS",
    "RESERVED_TARGETS", "RESTART_POLICIES", "SECCOMP_PROFILES", "Ceilings", "EgressRule",
    "ImageRecord", "Inventory", "Mount", "Network", "Persona", "Restart", "Shell", "User",
    "check_format", "check_identity", "check_mount_source", "check_mount_target", "context",
    "parse_cpu_max", "parse_inventory", "verify_inventory", "verify_signed",
]
