"""Dependency resolution: world atoms -> a consistent package set in install order.

A deterministic greedy solver, not apk's full backtracking one (documented in
docs/implementation/alpine.md). For each dependency, in a fixed order:

- already satisfied by a chosen package (by name or by a provide)? done;
- else pick among the candidates that match the version constraint and do not
  conflict with what is chosen: a package of that exact name first, then the
  highest ``provider_priority``, then the highest version, then the earlier
  repository, then the name. A provide without a version (``/bin/sh``) is only
  chosen automatically when its package sets a ``provider_priority`` or is the
  sole candidate, as in apk;
- then install_if: a package whose ``install_if`` atoms all hold is added.

Errors name the package and the atom that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cmp_to_key

from pipeline.alpine import version as v
from pipeline.alpine.deps import Dependency, parse_dependency
from pipeline.alpine.errors import MissingDependencyError, PackageConflictError, UnknownPackageError
from pipeline.alpine.package import Package


def newest(packages: Sequence[Package]) -> Package:
    return max(packages, key=lambda p: v.sort_key(p.version))


class _State:
    def __init__(self, repos) -> None:
        self.repos = repos
        self.chosen: dict[str, Package] = {}       # package name -> package
        self.why: dict[str, str] = {}              # package name -> who pulled it in
        self.repo_rank = {id(r): n for n, r in enumerate(repos.repositories)}
        self.world_conflicts: list[Dependency] = []

    def offers(self, pkg: Package, name: str) -> list[str | None]:
        """Versions under which ``pkg`` offers ``name`` (its own version, or provides)."""
        found: list[str | None] = [pkg.version] if pkg.name == name else []
        found += [p.version for p in pkg.provides if p.name == name]
        return found

    def satisfies(self, pkg: Package, dep: Dependency) -> bool:
        return any(dep.matches(ver, pkg.checksum) for ver in self.offers(pkg, dep.name))

    def satisfied(self, dep: Dependency) -> Package | None:
        for pkg in self.chosen.values():
            if self.satisfies(pkg, dep):
                return pkg
        return None

    def candidates(self, dep: Dependency) -> list[Package]:
        pool = list(self.repos.by_name.get(dep.name, []))
        pool += [pkg for pkg, _ in self.repos.providers.get(dep.name, [])]
        seen, result = set(), []
        for pkg in pool:
            if pkg.checksum not in seen and self.satisfies(pkg, dep):
                seen.add(pkg.checksum)
                result.append(pkg)
        exact = [p for p in result if p.name == dep.name or _versioned(p, dep.name)]
        virtual = [p for p in result if p not in exact]
        auto = [p for p in virtual if p.provider_priority > 0]
        return exact + (auto or (virtual if len(virtual) == 1 else []))

    def rank(self, dep: Dependency):
        def compare(a: Package, b: Package) -> int:
            keys = [
                (a.name == dep.name) - (b.name == dep.name),
                (a.name in self.chosen) - (b.name in self.chosen),
                a.provider_priority - b.provider_priority,
            ]
            for k in keys:
                if k:
                    return k
            order = v.compare(a.version, b.version)
            if order != v.EQUAL:
                return 1 if order == v.GREATER else -1
            ra, rb = self.repo_rank[id(a.repository)], self.repo_rank[id(b.repository)]
            if ra != rb:
                return rb - ra
            return (a.name < b.name) - (a.name > b.name)

        return cmp_to_key(compare)


def _versioned(pkg: Package, name: str) -> bool:
    return any(p.name == name and p.version is not None for p in pkg.provides)


def resolve(repos, atoms: list[str]) -> list[Package]:
    """Resolve world atoms; see the module docstring. Returns packages in install order."""
    state = _State(repos)
    world = [parse_dependency(a) for a in atoms]
    state.world_conflicts = [d for d in world if d.conflict]
    for dep in world:
        if not dep.conflict and dep.name not in repos.by_name and dep.name not in repos.providers:
            raise UnknownPackageError(f"unknown package {dep.name!r}: no repository has it")
    queue: list[tuple[Dependency, str]] = [(d, "world") for d in world]
    while True:
        _drain(state, queue)
        extra = _install_if(state)
        if not extra:
            break
        queue = [(Dependency(p.name, "=", p.version), "install_if") for p in extra]
    return _install_order(state.chosen)


def _drain(state: _State, queue: list[tuple[Dependency, str]]) -> None:
    while queue:
        dep, who = queue.pop(0)
        if dep.conflict:
            _check_conflict(state, dep, who)
            continue
        if state.satisfied(dep):
            continue
        pkg = _choose(state, dep, who, [d for d, _ in queue if d.name == dep.name])
        state.chosen[pkg.name] = pkg
        state.why[pkg.name] = who
        for conflict in (d for d in pkg.depends if d.conflict):
            _check_conflict(state, conflict, pkg.nv)
        queue.extend((d, pkg.nv) for d in pkg.depends)


def _choose(state: _State, dep: Dependency, who: str, pending: list[Dependency]) -> Package:
    candidates = state.candidates(dep)
    # Prefer a candidate that also meets the requests on this name still waiting
    # in the queue (``foo>1 foo<=2``), so a greedy pick does not paint us into a corner.
    agreeing = [p for p in candidates
                if all(state.satisfies(p, d) != d.conflict for d in pending)]
    candidates = agreeing or candidates
    requirer = "the recipe" if who == "world" else who
    if not candidates:
        offered = [p.nv for p in state.repos.by_name.get(dep.name, [])]
        if offered:
            raise MissingDependencyError(
                f"{requirer} requires {dep}, but only {', '.join(sorted(offered))} is available")
        raise MissingDependencyError(f"{requirer} requires {dep}, which no package provides")
    allowed = [p for p in candidates if _clash(state, p) is None]
    if not allowed:
        pkg = candidates[0]
        other, atom = _clash(state, pkg)
        raise PackageConflictError(
            f"{requirer} requires {dep}, but {pkg.nv} conflicts with {other} ({atom})")
    return max(allowed, key=state.rank(dep))


def _clash(state: _State, pkg: Package):
    """(chosen package, atom) that rules ``pkg`` out, or None."""
    same = state.chosen.get(pkg.name)
    if same is not None and same.checksum != pkg.checksum:
        return same.nv, f"only one {pkg.name} can be installed"
    for dep in state.world_conflicts:
        if state.satisfies(pkg, dep):
            return "the recipe", str(dep)
    for other in state.chosen.values():
        for dep in other.depends:
            if dep.conflict and state.satisfies(pkg, dep):
                return other.nv, str(dep)
        for dep in pkg.depends:
            if dep.conflict and state.satisfies(other, dep):
                return other.nv, str(dep)
    return None


def _check_conflict(state: _State, dep: Dependency, who: str) -> None:
    for pkg in state.chosen.values():
        if state.satisfies(pkg, dep):
            requirer = "the recipe" if who == "world" else who
            raise PackageConflictError(f"{requirer} conflicts with {pkg.nv} ({dep}), "
                                       f"which {state.why.get(pkg.name, 'world')} pulled in")


def _install_if(state: _State) -> list[Package]:
    """Packages (newest of each name) whose install_if atoms all hold now."""
    added = []
    names = sorted(n for n, pkgs in state.repos.by_name.items()
                   if n not in state.chosen and any(p.install_if for p in pkgs))
    for name in names:
        pkg = newest(state.repos.by_name[name])
        if pkg.install_if and all(
            (state.satisfied(d) is None) if d.conflict else state.satisfied(d) is not None
            for d in pkg.install_if
        ) and _clash(state, pkg) is None:
            added.append(pkg)
    return added


def _install_order(chosen: dict[str, Package]) -> list[Package]:
    """Dependencies before dependents (depth first, by name); cycles broken by name."""
    providers: dict[str, list[Package]] = {}
    for pkg in chosen.values():
        for name in [pkg.name, *(p.name for p in pkg.provides)]:
            providers.setdefault(name, []).append(pkg)
    order: list[Package] = []
    state: dict[str, int] = {}

    def visit(pkg: Package) -> None:
        if state.get(pkg.name):
            return
        state[pkg.name] = 1
        for dep in pkg.depends:
            if not dep.conflict:
                for target in sorted(providers.get(dep.name, []), key=lambda p: p.name):
                    visit(target)
        order.append(pkg)
        state[pkg.name] = 2

    for name in sorted(chosen):
        visit(chosen[name])
    return order
