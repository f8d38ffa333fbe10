"""Recipe schema: shipped recipes parse; every mistake is one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bay0.errors import NotFoundError, ValidationError
from pipeline.recipe import load_recipe, parse_recipe, recipes_dir, resolve_path

POD = """
kind = "pod"
name = "demo"
version = "1"
packages = ["busybox", "musl"]

[alpine]
release = "v3.19"
keys = "keys"
repositories = [{ name = "local", index = "APKINDEX.tar.gz", packages = ["."] }]

[pod]
entrypoint = ["/bin/true"]
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "APKINDEX.tar.gz").write_bytes(b"")
    return tmp_path


def parse(text: str, base: Path):
    return parse_recipe(text.encode(), label="recipe.toml", base=base)


def error_of(text: str, base: Path) -> str:
    with pytest.raises((ValidationError, NotFoundError)) as info:
        parse(text, base)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.hint
    return message


SHIPPED = sorted(recipes_dir().rglob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipes_parse(path: Path, alpine: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.packages and recipe.alpine.release == "v3.19"
    assert len(recipe.digest) == 64


def test_shipped_set_is_complete() -> None:
    names = {p.name for p in SHIPPED}
    assert {"spine-test.toml", "spine-production.toml"} <= names
    assert len(list((recipes_dir() / "personas").glob("*.toml"))) >= 2


def test_test_recipe_states_every_borrowed_piece(alpine: Path) -> None:
    recipe = load_recipe(recipes_dir() / "spine-test.toml")
    assert all(b.reason for b in recipe.debian)
    borrowed = {p for b in recipe.debian for p in b.packages}
    assert {"python3.11-minimal", "python3-cryptography", "cryptsetup-bin"} <= borrowed
    assert recipe.kernel and recipe.kernel.debian and recipe.kernel.reason


def test_production_recipe_borrows_nothing(alpine: Path) -> None:
    recipe = load_recipe(recipes_dir() / "spine-production.toml")
    assert recipe.debian == ()
    assert recipe.kernel and recipe.kernel.package and not recipe.kernel.debian
    assert {"busybox", "musl", "python3", "py3-cryptography", "cryptsetup", "kmod"} <= set(recipe.packages)
    assert recipe.alpine.mirror == "https://dl-cdn.alpinelinux.org/alpine"


def test_minimal_pod_parses(base: Path) -> None:
    recipe = parse(POD, base)
    assert recipe.kind == "pod" and recipe.pod and recipe.pod.entrypoint == ("/bin/true",)
    assert recipe.alpine.keys == base / "keys"
    assert recipe.alpine.repositories[0].packages == (str(base / "."),)


def test_digest_is_of_the_bytes(base: Path) -> None:
    assert parse(POD, base).digest != parse(POD + "\n", base).digest


@pytest.mark.parametrize(
    "edit, expected",
    [
        (('packages = ["busybox", "musl"]', 'packages = ["a", "b", "c", 7]'),
         "recipe.toml: packages[3]: expected a string, got 7"),
        (('name = "demo"', 'name = "demo"\ncolour = "red"'), "recipe.toml: colour: unknown key"),
        (('release = "v3.19"', 'release = "v3.19"\nmirrorz = "x"'), "recipe.toml: alpine.mirrorz: unknown key"),
        (('version = "1"', 'version = 1'), "recipe.toml: version: expected a string, got 1"),
        (('kind = "pod"', 'kind = "vm"'), 'recipe.toml: kind: expected "spine" or "pod", got "vm"'),
        (('name = "demo"\n', ''), "recipe.toml: name: missing required key"),
        (('entrypoint = ["/bin/true"]', 'entrypoint = "/bin/true"'),
         'recipe.toml: pod.entrypoint: expected a list of strings, got "/bin/true"'),
        (('entrypoint = ["/bin/true"]', 'entrypoint = ["true"]'),
         'recipe.toml: pod.entrypoint[0]: must be an absolute path in the image, got "true"'),
        (('entrypoint = ["/bin/true"]', 'entrypoint = ["/bin/true"]\nceilings = { pids = true }'),
         "recipe.toml: pod.ceilings.pids: expected an integer, got true"),
        (('[pod]', '[bay0]\n[pod]'), "recipe.toml: bay0: not allowed in a pod recipe"),
        (('packages = ["busybox", "musl"]', 'packages = ["busybox"]\n[[debian]]\npackages = ["x"]'),
         "recipe.toml: debian[0].reason: missing required key"),
        (('packages = ["busybox", "musl"]', 'packages = ["busybox"]\n[[file]]\npath = "/a"'),
         "recipe.toml: file[0]: needs exactly one of content, src, symlink, directory"),
        (('packages = ["busybox", "musl"]', 'packages = ["busybox"]\n[[file]]\npath = "/a"\ncontent = "x"\nmode = 99999'),
         "recipe.toml: file[0].mode: must be between 0 and 4095, got 99999"),
        (('packages = ["busybox", "musl"]', 'packages = ["busybox"]\n[[user]]\nname = "a"\nuid = -1\ngid = 1'),
         "recipe.toml: user[0].uid: must be between 0 and 4294967295, got -1"),
        (('repositories = [', 'repositories = ["main", '),
         'recipe.toml: alpine.repositories[0]: "main" names a repository, but alpine.mirror is not set'),
        (('name = "demo"', 'name = "demo"\nformat = 2'), "recipe.toml: format: recipe format 2 is not supported"),
        (('name = "demo"', 'name = "demo'), "recipe.toml: invalid TOML"),
        (('name = "demo"', 'name = "demo"\ncompression = "lzma"'),
         "recipe.toml: compression: 'lzma' is not one of lz4, zstd, xz, gzip"),
    ],
)
def test_bad_recipes_name_the_field(base: Path, edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in POD
    assert error_of(POD.replace(old, new), base).startswith(expected)


def test_compression_defaults_to_zstd_and_the_spines_choose_lz4(base: Path, alpine: Path) -> None:
    assert parse(POD, base).compression == "zstd"
    assert parse(POD.replace('name = "demo"', 'name = "demo"\ncompression = "xz"'), base).compression == "xz"
    for name in ("spine-test.toml", "spine-production.toml"):
        assert load_recipe(recipes_dir() / name).compression == "lz4"


def test_spine_recipe_needs_bay0_and_trust(base: Path) -> None:
    text = POD.replace('kind = "pod"', 'kind = "spine"').replace('[pod]\nentrypoint = ["/bin/true"]', "")
    assert error_of(text, base) == "recipe.toml: bay0: a spine recipe needs a [bay0] table"


def test_kernel_needs_one_source_and_a_reason_to_borrow(base: Path) -> None:
    spine = POD.replace('kind = "pod"', 'kind = "spine"').replace(
        '[pod]\nentrypoint = ["/bin/true"]', '[bay0]\n[trust]\nkeys = ["keys"]\n')
    assert parse(spine, base).bay0 is not None
    both = spine + '[kernel]\npackage = "linux-lts"\ndebian = "linux-image-amd64"\n'
    assert error_of(both, base) == "recipe.toml: kernel: needs exactly one of package, debian, vmlinuz"
    no_reason = spine + '[kernel]\ndebian = "linux-image-amd64"\n'
    assert "kernel.reason" in error_of(no_reason, base)


def test_missing_paths_are_named(base: Path) -> None:
    text = POD.replace('keys = "keys"', 'keys = "nope"')
    assert error_of(text, base).startswith(f"recipe.toml: alpine.keys: {base / 'nope'} does not exist")


def test_path_prefixes(base: Path, alpine: Path) -> None:
    assert resolve_path("@fixtures/keys", base) == alpine / "keys"
    assert resolve_path("rel/x", base) == base / "rel/x"
    assert resolve_path("/abs", base) == Path("/abs")
    with pytest.raises(ValidationError, match="unknown path prefix"):
        resolve_path("@nowhere/x", base)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_recipe(tmp_path / "absent.toml")


def test_repository_specs_follow_the_official_layout(alpine: Path) -> None:
    from pipeline.rootfs import repository_specs, world_of

    production = load_recipe(recipes_dir() / "spine-production.toml")
    specs = repository_specs(production)
    assert [s.index for s in specs] == [
        "https://dl-cdn.alpinelinux.org/alpine/v3.19/main/x86_64/APKINDEX.tar.gz",
        "https://dl-cdn.alpinelinux.org/alpine/v3.19/community/x86_64/APKINDEX.tar.gz",
    ]
    assert world_of(production)[-1] == "linux-lts"  # the kernel package joins the world
    test = load_recipe(recipes_dir() / "spine-test.toml")
    (spec,) = repository_specs(test)
    assert spec.index == str(alpine / "v3.19/iso-repo/x86_64/APKINDEX.tar.gz")
    assert spec.package_dirs == (str(alpine / "v3.19/iso-repo/x86_64"),)
