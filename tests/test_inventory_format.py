"""bay0.formats.inventory: schema validation, canonical bytes, unknown fields (pure)."""

from __future__ import annotations

import dataclasses
import posixpath
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bay0.errors import FormatError, ValidationError
from bay0.formats import canonical
from bay0.formats import inventory as inv
from tests.test_inventory_data import document

DROP = object()


def edit(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with DROP delete) ``a.0.b``-style ``path`` in ``doc``."""
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is DROP:
        del node[key]
    else:
        node[key] = value
    return doc


P0 = "personas.0"
M0 = "personas.0.mounts.0"
CASES = [
    # (id, path, value, message fragment)
    ("duplicate-name", "personas.1.name", "web", "persona web: duplicate name"),
    ("duplicate-shell", "shells", [{"name": "front", "budget": {"cpu_max": "100000 100000",
     "memory_max": 1 << 30, "pids_max": 256}}] * 2, "shell front: duplicate name"),
    ("missing-cpu", f"{P0}.ceilings.cpu_max", DROP, "persona web: ceilings: cpu_max is missing"),
    ("missing-memory", f"{P0}.ceilings.memory_max", DROP, "ceilings: memory_max is missing"),
    ("missing-pids", f"{P0}.ceilings.pids_max", DROP, "persona web: ceilings: pids_max is missing"),
    ("missing-ceilings", f"{P0}.ceilings", DROP, "ceilings is missing"),
    ("over-budget-cpu", "shells.0.budget.cpu_max", "40000 100000",
     "shell front: over budget: cpu of web sums to 0.5 > 0.4 CPUs"),
    ("over-budget-memory", "shells.0.budget.memory_max", 128 << 20, "over budget: memory"),
    ("over-budget-pids", "shells.0.budget.pids_max", 32, "shell front: over budget: pids"),
    ("undefined-shell", f"{P0}.shell", "back", "persona web: shell: 'back' is not defined"),
    ("source-dotdot", f"{M0}.source", "web/../../etc", "has a '..' component; it escapes"),
    ("source-absolute", f"{M0}.source", "/etc", "is absolute"),
    ("source-dot", f"{M0}.source", "a/./b", "has a '.' component"),
    ("source-empty-part", f"{M0}.source", "a//b", "'empty' component"),
    ("source-trailing-slash", f"{M0}.source", "a/", "'empty' component"),
    ("source-empty", f"{M0}.source", "", "'empty' component"),
    ("source-hidden", f"{M0}.source", "web/.link", "looks like a link"),
    ("source-tilde", f"{M0}.source", "~root", "looks like a link"),
    ("source-option", f"{M0}.source", "-rf", "looks like a link"),
    ("source-backslash", f"{M0}.source", "a\\..\\b", "contains '\\\\'"),
    ("source-nul", f"{M0}.source", "a\0b", "contains '\\x00'"),
    ("source-newline", f"{M0}.source", "a\nb", "contains '\\n'"),
    ("source-reserved", f"{M0}.source", "spine/inventory", "/persist/spine is reserved"),
    ("exec-read-only", f"{M0}", {"source": "x", "target": "/x", "rw": False, "exec": True},
     "persona web: mounts[0]: exec on a read-only mount (x:/x)"),
    ("rw-not-bool", f"{M0}.rw", 1, "mounts[0]: rw: must be true or false"),
    ("target-relative", f"{M0}.target", "data", "is not an absolute path"),
    ("target-root", f"{M0}.target", "/", "is not a plain name"),
    ("target-dotdot", f"{M0}.target", "/a/../proc", "is not a plain name"),
    ("target-proc", f"{M0}.target", "/proc/sys", "/proc/sys is set up by bay0"),
    ("target-dev", f"{M0}.target", "/dev", "set up by bay0"),
    ("target-twice", f"{P0}.mounts", [{"source": "a", "target": "/x", "rw": True, "exec": False},
     {"source": "b", "target": "/x", "rw": False, "exec": False}], "target /x is mounted twice"),
    ("seccomp-unknown", f"{P0}.seccomp", "unconfined", "persona web: seccomp: unknown profile"),
    ("network-mode", f"{P0}.network", "host", 'network: must be "none" or an object'),
    ("network-no-prefix", f"{P0}.network.address", "10.0.0.2", "(with its prefix)"),
    ("network-garbage", f"{P0}.network.address", "ten", "is not an address with prefix"),
    ("network-net-address", f"{P0}.network.address", "10.0.0.0/24", "network or broadcast"),
    ("network-loopback", f"{P0}.network.address", "127.0.0.2/8", "not a unicast host"),
    ("network-gateway", f"{P0}.network.gateway", "10.9.0.1", "gateway: 10.9.0.1 is not another"),
    ("network-gateway-self", f"{P0}.network.gateway", "10.0.0.2", "is not another host"),
    ("egress-proto", f"{P0}.network.egress.0.proto", "icmp", "egress[0]: proto: 'icmp'"),
    ("egress-port", f"{P0}.network.egress.0.port", 0, "egress[0]: port: 0 is outside"),
    ("egress-host-bits", f"{P0}.network.egress.0.dest", "10.0.0.1/24", "not a network in CIDR"),
    ("egress-family", f"{P0}.network.egress.0.dest", "fd00::/64", "is not IPv4 like"),
    ("egress-duplicate", f"{P0}.network.egress", [{"dest": "10.0.0.1/32", "proto": "tcp",
     "port": 80}] * 2, "egress[1]: duplicate rule"),
    ("egress-missing", f"{P0}.network.egress", DROP, "network: egress is missing"),
    ("address-reused", "personas.1.network", {"address": "10.0.0.2/16", "egress": []},
     "persona batch: network.address: 10.0.0.2 is already used by persona web"),
    ("uid-root", f"{P0}.user.uid", 0, "persona web: user.uid: 0 is outside"),
    ("gid-root", f"{P0}.user.gid", 0, "user.gid: 0 is outside"),
    ("uid-minus-one", f"{P0}.user.uid", 2**32 - 1, "user.uid"),
    ("command-empty", f"{P0}.command", [], "command: must be a non-empty argv"),
    ("command-relative", f"{P0}.command", ["httpd"], "no PATH lookup"),
    ("command-nul", f"{P0}.command", ["/bin/a", "b\0"], "command[1]: contains NUL"),
    ("env-key", f"{P0}.environment", {"1X": "y"}, "is not a variable name"),
    ("env-value", f"{P0}.environment", {"X": 1}, "environment.X: must be a string"),
    ("restart-policy", f"{P0}.restart.policy", "sometimes", "restart: policy: 'sometimes'"),
    ("restart-negative", f"{P0}.restart.backoff", -1, "restart: backoff: -1 is outside"),
    ("cpu-not-string", f"{P0}.ceilings.cpu_max", 50000, "cpu_max: must be a string"),
    ("cpu-decimal", f"{P0}.ceilings.cpu_max", "0.5", 'is not "QUOTA PERIOD"'),
    ("cpu-max-word", f"{P0}.ceilings.cpu_max", "max 100000", 'is not "QUOTA PERIOD"'),
    ("cpu-quota-tiny", f"{P0}.ceilings.cpu_max", "500 100000", "below the kernel minimum"),
    ("cpu-period", f"{P0}.ceilings.cpu_max", "50000 2000000", "period 2000000 is outside"),
    ("memory-unaligned", f"{P0}.ceilings.memory_max", 1_000_000_000, "not a multiple of 4096"),
    ("memory-bool", f"{P0}.ceilings.memory_max", True, "memory_max: must be an integer, not bool"),
    ("pids-zero", f"{P0}.ceilings.pids_max", 0, "pids_max: 0 is outside"),
    ("image-sha-upper", f"{P0}.image.sha256", "A" * 64, "image.sha256"),
    ("image-file-path", f"{P0}.image.file", "../web.img", "image.file"),
    ("image-no-tree", f"{P0}.image.size", 4096 * 10, "image.size: leaves no room"),
    ("image-missing-root", f"{P0}.image.root_hash", DROP, "image: root_hash is missing"),
    ("purge-negative", f"{P0}.purge", -1, "persona web: purge: -1 is outside"),
    ("name-upper", f"{P0}.name", "Web", "is not a name"),
    ("name-long", f"{P0}.name", "a" * 64, "is not a name"),
    ("version-negative", "version", -1, "inventory: version: -1 is outside"),
    ("version-float-ish", "version", "7", "inventory: version: must be an integer"),
    ("expires-before", "expires", 1_700_000_000, "inventory: expires: is not after created"),
    ("personas-object", "personas", {}, "inventory: personas: must be a list"),
]


@pytest.mark.parametrize("path, value, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validation_names_persona_and_field(path: str, value: Any, fragment: str) -> None:
    doc = edit(document(), path, value)
    with pytest.raises(ValidationError) as caught:
        inv.Inventory.from_dict(doc)
    assert fragment in caught.value.message
    assert "\n" not in caught.value.message and caught.value.hint


@pytest.mark.parametrize(
    "value, fragment",
    [("spine-inventory/2", "unsupported inventory format"), ("other/1", "not a Spine inventory"),
     (None, "must be a string")],
)
def test_unknown_major_or_foreign_format_is_refused(value: Any, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment):
        inv.Inventory.from_dict(document(format=value))


def test_valid_document_round_trips_byte_for_byte() -> None:
    parsed = inv.Inventory.from_dict(document())
    data = parsed.to_bytes()
    assert canonical.is_canonical(data)
    again = inv.parse_inventory(data, require_canonical=True)
    assert again == parsed and again.to_bytes() == data
    web = again.persona("web")
    assert web.ceilings.cpus == Fraction(1, 2)
    assert web.network.egress[0].port == 80 and again.persona("batch").network is None


def test_optional_persona_fields_default() -> None:
    doc = document()
    for key in ("mounts", "environment", "shell", "purge"):
        del doc["personas"][1][key]
    batch = inv.Inventory.from_dict(doc).persona("batch")
    assert (batch.mounts, batch.environment, batch.shell, batch.purge) == ((), {}, None, 0)


def test_unknown_fields_of_a_known_major_are_kept() -> None:
    doc = document(format="spine-inventory/1.4", rollout={"wave": 2})
    doc["personas"][0]["healthcheck"] = ["/bin/true"]
    doc["personas"][0]["ceilings"]["io_max"] = "8:0 rbps=1"
    doc["personas"][0]["mounts"][0]["idmap"] = True
    doc["personas"][0]["user"]["groups"] = [10, 20]
    doc["personas"][0]["network"]["egress"][0]["log"] = True
    doc["personas"][0]["restart"]["window"] = 60
    doc["shells"][0]["weight"] = 100
    parsed = inv.Inventory.from_dict(doc)
    assert parsed.extra == {"rollout": {"wave": 2}}
    assert parsed.persona("web").extra == {"healthcheck": ["/bin/true"]}
    assert inv.parse_inventory(parsed.to_bytes()).to_dict() == doc
    assert parsed.to_bytes() == canonical.dumps(doc)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b'{"format": "spine-inventory/1"}', "not canonical"),
        (canonical.dumps(document()) + b"\n", "not canonical"),
        (b'{"version":1,"format":"spine-inventory/1"}', "not canonical"),
        (b'{"a":1,"a":1}', "duplicate key"),
        (b'{"version":1.0}', "float"),
        (b'{"version":NaN}', "NaN"),
        (b"\xef\xbb\xbf{}", "JSON"),
        (b"[]", "inventory: must be an object"),
        (b" " * (inv.MAX_DOCUMENT_BYTES + 1), "over 1048576"),
    ],
)
def test_strict_parsing(data: bytes, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment):
        inv.parse_inventory(data, require_canonical=True)


def test_non_canonical_bytes_still_load_for_editing() -> None:
    data = canonical.dumps(document()).replace(b',"version"', b', "version"')
    assert inv.parse_inventory(data).version == 7


def test_dataclasses_validate_on_construction_and_replace() -> None:
    parsed = inv.Inventory.from_dict(document())
    web, batch = parsed.persona("web"), parsed.persona("batch")
    with pytest.raises(ValidationError, match="persona web: seccomp: unknown profile"):
        dataclasses.replace(web, seccomp="none")
    with pytest.raises(ValidationError, match="persona batch: duplicate name"):
        dataclasses.replace(parsed, personas=(batch, batch))
    with pytest.raises(ValidationError, match="shell front: over budget"):
        parsed.with_persona(dataclasses.replace(batch, shell="front",
                                                ceilings=inv.Ceilings("60000 100000", 1 << 20, 1)))
    assert parsed.without_persona("web").persona("web") is None
    assert parsed.with_persona(dataclasses.replace(batch, seccomp="default")).personas[1].seccomp \
        == "default"


def test_lone_surrogate_is_a_validation_error() -> None:
    doc = edit(document(), "personas.0.command", ["/bin/app", "\udcff"])
    with pytest.raises(ValidationError, match="not valid Unicode"):
        inv.Inventory.from_dict(doc)


# --- properties ---------------------------------------------------------------------

segment = st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(segment | st.sampled_from(["..", ".", "", "~", "-x", ".a"]), min_size=1,
                max_size=5).map("/".join))
def test_accepted_mount_sources_stay_under_persist(source: str) -> None:
    try:
        inv.check_mount_source(source)
    except ValidationError:
        return
    joined = posixpath.join("/persist", source)
    assert posixpath.normpath(joined) == joined  # nothing to normalize away
    assert joined.startswith("/persist/") and "\\" not in joined and "\0" not in joined
    assert all(not part.startswith((".", "-", "~")) for part in source.split("/"))


ceilings = st.builds(
    lambda q, m, p: {"cpu_max": f"{q} 100000", "memory_max": m * 4096, "pids_max": p},
    st.integers(1000, 400_000), st.integers(256, 1 << 20), st.integers(1, 4096),
)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               max_size=12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), min_size=0, max_size=4,
             unique=True),
    ceilings, st.lists(text, max_size=3), st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), text, max_size=3),
    st.integers(0, 2**40),
)
def test_canonical_round_trip_property(names_, ceil, args, env, version) -> None:
    from tests.test_inventory_data import persona

    doc = document(version=version, shells=[], personas=[
        persona(n, ceilings=ceil, command=["/bin/x", *args], environment=env, shell=None,
                network="none") for n in names_
    ])
    parsed = inv.Inventory.from_dict(doc)
    data = parsed.to_bytes()
    assert data == canonical.dumps(doc)
    assert inv.parse_inventory(data, require_canonical=True) == parsed
