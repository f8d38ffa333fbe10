"""The hostile-world suite under pytest: one test per case of tests/hostile/cases.py.

The host scenarios run once per session (under a second in all) through the real
launcher; each case then asserts its own observation. QEMU cases boot the real
appliance (marked qemu); cases an existing test already proves are not repeated here
(``python -m tests.hostile --report`` lists which test covers them).
"""

from __future__ import annotations

import pytest

from tests.conftest import IN_CI
from tests.hostile import guest, host
from tests.hostile.cases import CASES, Case
from tests.hostile.report import FAIL, NOT_RUN, PASS, judge
from tests.hostile.world import WorldUnavailable, make_world

HOST_CASES = [c for c in CASES if c.where == "host"]
GUEST_CASES = [c for c in CASES if c.where == "qemu"]


@pytest.fixture(scope="session")
def host_observations():
    try:
        world = make_world()
    except WorldUnavailable as e:
        if IN_CI:
            pytest.fail(f"hostile suite: {e}")
        pytest.skip(str(e))
    try:
        yield host.run_all(world)
    finally:
        world.close()


@pytest.fixture(scope="session")
def guest_observations(host_observations):
    # after the host part: the launcher must run from a single-threaded process,
    # and the QEMU runner starts threads
    return guest.run_all()


def _check(case: Case, observations, skip: str | None) -> None:
    row = judge(case, observations.get(case.name), skip)
    if row.status == NOT_RUN:
        if IN_CI:  # CI installs every tool (.ci/run): a case that cannot run is a failure there
            pytest.fail(f"{case.name} not run: {row.observed}")
        pytest.skip(row.observed)
    assert row.status == PASS, (
        f"{case.name}: {case.what}\nexpected {case.expect}, observed {row.observed}\n{row.evidence}")


@pytest.mark.parametrize("case", HOST_CASES, ids=lambda c: c.name)
def test_host(case: Case, host_observations) -> None:
    _check(case, host_observations, None)


def test_memfd_exec_is_seen_on_the_host(host_observations) -> None:
    # judged in the guest (bay0's vm.memfd_noexec=2); here the probe must at least report
    assert "escape/memfd-exec" in host_observations


def test_host_scenarios_raised_nothing(host_observations) -> None:
    errors = {k: v.detail for k, v in host_observations.items() if k.startswith("error/")}
    assert not errors


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("case", GUEST_CASES, ids=lambda c: c.name)
def test_guest(case: Case, guest_observations) -> None:
    observations, skips = guest_observations
    _check(case, observations, skips.get(case.name))


def test_every_case_is_judged_somewhere() -> None:
    wheres = {c.where for c in CASES}
    assert wheres <= {"host", "qemu", "covered"}
    assert all(c.covered_by for c in CASES if c.where == "covered")
    assert FAIL != PASS  # the statuses are distinct words in the table
