"""The hostile-world cases: what each attack is, where it can be observed, what must happen.

A case's ``expect`` is one or more alternatives separated by ``|``; each alternative
is a probe result word (``killed``, ``denied``, ``absent``, ``contained``, ``ok``)
optionally followed by the start of the detail (``killed SIGSYS``, ``denied ENOSYS``).
``where`` says which run observes it: ``host`` (the real launcher on this machine),
``qemu`` (the booted appliance), or ``covered`` (an existing test already proves it:
``covered_by`` names it; the report lists it instead of duplicating the test).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str  # group/probe, unique
    expect: str
    what: str
    where: str = "host"
    covered_by: str = ""

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def probe(self) -> str:
        return self.name.split("/", 1)[1]

    def accepts(self, result: str, detail: str) -> bool:
        """Whether the observed ``result``/``detail`` is one of the expected outcomes."""
        for alternative in self.expect.split("|"):
            word, _, prefix = alternative.strip().partition(" ")
            if result == word and set(prefix.split()) <= set(detail.split()):
                return True
        return False


KILLED = "killed SIGSYS"
GONE = "absent|denied"

# (probe, expect, what) for `hostile_probe escape`, run in one persona on the host.
_ESCAPES = [
    ("fd-leak", "contained", "only fds 0-2 reach the command"),
    ("proc-fd-chdir", "contained", "no directory via /proc/{self,1,2}/fd (CVE-2024-21626)"),
    ("cwd-escape", "contained", "chdir .. never leaves the root"),
    ("proc1-exe-write", GONE, "open /proc/1/exe for writing (CVE-2019-5736)"),
    ("proc1-mem", GONE, "open /proc/1/mem read-write"),
    ("proc1-environ", GONE, "read bay0's fork's environment"),
    ("self-exe-write", "denied", "overwrite our own binary in the image"),
    ("image-write", "denied", "open /bin/busybox in the image for writing"),
    ("write-outside-persist", "contained", "create files in /, /tmp, /etc, /dev, /run, ..."),
    ("proc-readonly", "contained", "/proc/sys, bus, fs, irq, sysrq-trigger are read-only mounts"),
    # uid 1000 meets EACCES before the read-only mount's EROFS; proc-readonly proves the
    # second layer. modprobe and sysrq-trigger exist only with CONFIG_MODULES/MAGIC_SYSRQ.
    ("core-pattern", "denied", "write /proc/sys/kernel/core_pattern"),
    ("modprobe-path", "denied|absent", "write /proc/sys/kernel/modprobe"),
    ("sysrq-trigger", "denied|absent", "write /proc/sysrq-trigger"),
    ("uevent-helper", "absent", "write /sys/kernel/uevent_helper (no /sys)"),
    ("proc-kcore", "contained|absent", "/proc/kcore masked"),
    ("proc-keys", "contained|absent", "/proc/keys masked"),
    ("proc-kallsyms", "contained|absent", "/proc/kallsyms masked"),
    ("mount-sysfs", KILLED, "mount sysfs"),
    ("cgroup1-release-agent", KILLED, "mount cgroup v1 for release_agent (CVE-2022-0492)"),
    ("mknod-block", KILLED, "mknod a block device (8:0) and open it"),
    ("mknod-mem", KILLED, "mknod /dev/mem (1:1) and open it"),
    ("block-devices", "contained", "no disk, loop, dm or memory node in /dev"),
    ("dev-mem", "absent", "/dev/mem absent"),
    ("dev-kmsg", "absent", "/dev/kmsg absent"),
    ("dev-watchdog", "absent", "/dev/watchdog absent"),
    ("dev-watchdog0", "absent", "/dev/watchdog0 absent"),
    ("dev-console", "absent", "/dev/console absent"),
    ("dev-tty", "absent", "no controlling tty (setsid): /dev/tty gives ENXIO"),
    ("tiocsti", KILLED, "TIOCSTI on stdin (CVE-2017-5226)"),
    ("tiocsti-high-bits", KILLED, "TIOCSTI | 0xffffffff00000000 (CVE-2019-10063)"),
    ("tioclinux", KILLED, "TIOCLINUX"),
    ("unshare-user", KILLED, "unshare(CLONE_NEWUSER)"),
    ("unshare-mount", KILLED, "unshare(CLONE_NEWNS)"),
    ("clone-newuser", KILLED, "clone(CLONE_NEWUSER)"),
    ("clone3-newuser", "denied ENOSYS", "clone3(CLONE_NEWUSER): ENOSYS so libc falls back"),
    ("setns", KILLED, "setns"),
    ("io-uring", "denied ENOSYS", "io_uring_setup"),
    ("af-alg", KILLED, "socket(AF_ALG)"),
    ("af-vsock", KILLED, "socket(AF_VSOCK)"),
    ("af-packet", KILLED, "socket(AF_PACKET)"),
    ("af-key", KILLED, "socket(AF_KEY)"),
    ("af-netlink-audit", KILLED, "socket(AF_NETLINK, NETLINK_AUDIT)"),
    ("ia32-unshare", KILLED, "unshare through int 0x80 (ia32 entry)"),
    ("ia32-getpid", KILLED, "even getpid through int 0x80"),
    ("x32-unshare", KILLED, "unshare with the x32 bit (nr | 0x40000000)"),
    ("x32-getpid", KILLED, "even getpid with the x32 bit"),
    ("mount-tmpfs", KILLED, "mount tmpfs (a mount that could propagate)"),
    ("mount-propagation", "contained", "no shared/master mount in the persona's mountinfo"),
    ("setuid-binary", "contained", "a setuid-root copy of the probe keeps euid 1000, no caps"),
    ("fcaps-binary", "contained", "a cap_sys_admin+ep copy of the probe gets no capability"),
    ("setuid-0", "denied EPERM", "setuid(0)"),
    ("capabilities", "contained", "CapInh/Prm/Eff/Bnd/Amb = 0, NoNewPrivs 1, Seccomp 2"),
    ("ptrace-pid1", KILLED, "ptrace(ATTACH) PID 1"),
    ("proc-pids-visible", "contained", "PID 1 (bay0's fork, root) not visible"),
    ("chroot", KILLED, "chroot"),
    ("ptrace-traceme", KILLED, "ptrace(TRACEME)"),
    ("process-vm-readv", KILLED, "process_vm_readv"),
    ("keyctl", KILLED, "keyctl"),
    ("bpf", KILLED, "bpf"),
    ("perf-event-open", KILLED, "perf_event_open"),
    ("userfaultfd", KILLED, "userfaultfd"),
    ("open-by-handle-at", KILLED, "open_by_handle_at (shocker)"),
    ("init-module", KILLED, "init_module"),
    ("kexec-load", KILLED, "kexec_load"),
    ("reboot", KILLED, "reboot(POWER_OFF)"),
    ("syslog", KILLED, "syslog (dmesg)"),
    ("personality", KILLED, "personality(READ_IMPLIES_EXEC)"),
    ("sethostname", KILLED, "sethostname"),
    ("modify-ldt", KILLED, "modify_ldt"),
    ("iopl", KILLED, "iopl(3)"),
    ("pivot-root", KILLED, "pivot_root"),
    ("fsopen", KILLED, "fsopen (new mount API)"),
    ("open-tree", KILLED, "open_tree"),
    ("pidfd-getfd", KILLED, "pidfd_getfd"),
    ("kill-pid1", "contained", "SIGKILL/SIGSTOP to PID 1 from inside: ignored"),
]

# (probe, expect, what) for `hostile_probe attack`: against another persona and against bay0.
_LATERAL = [
    ("kill", "absent ESRCH", "SIGKILL its host pid"),
    ("signal0", "absent ESRCH", "kill(pid, 0): is it even addressable"),
    ("pidfd-open", "absent ESRCH", "pidfd_open its host pid"),
    ("ptrace", KILLED, "ptrace(ATTACH) its host pid"),
    ("environ", "absent", "read /proc/<pid>/environ"),
    ("environ-scan", "contained", "the victim's secret in no readable /proc/*/environ"),
    ("proc-root", "absent", "open /proc/<pid>/root"),
    ("abstract-unix", "denied ECONNREFUSED", "connect to its abstract unix socket"),
    ("loopback", "denied ECONNREFUSED", "connect to its 127.0.0.1 listener"),
    ("sysv-shm", "absent ENOENT", "shmget its SysV shared memory key"),
    ("sysv-msg", "absent ENOENT", "msgget its SysV message queue key"),
    ("posix-shm", GONE, "create /dev/shm/x (no /dev/shm)"),
]

GUEST_ONLY = "cgroup ceilings and bay0's boot sysctls exist only in the booted appliance"

CASES: list[Case] = (
    [Case(f"escape/{p}", e, w) for p, e, w in _ESCAPES]
    + [Case("escape/memfd-exec", "denied|killed", "run an ELF from a memfd despite noexec "
            "(sandbox.md: bay0 sets vm.memfd_noexec=2 at boot)", where="qemu")]
    + [Case(f"lateral/{p}", e, f"persona -> persona: {w}") for p, e, w in _LATERAL]
    + [Case(f"bay0/{p}", e, f"persona -> bay0: {w}") for p, e, w in _LATERAL if p != "environ-scan"]
    + [
        Case("lateral/victim-ready", "ok", "the victim reached its own socket, port and IPC (else the attacks prove nothing)"),
        Case("lateral/kill-all", "contained", "kill(-1, SIGKILL) from a persona: the other persona survives"),
        Case("lateral/victim-survives", "contained", "after every attack the victim is still running"),
        Case("mounts/no-leak-to-host", "contained", "no persona mount shows in the host's mountinfo"),
        Case("symlink/plant", "ok", "a persona plants links to /etc/shadow, /etc, / in its rw bind"),
        Case("symlink/relaunch-bind", "denied ELOOP", "purge, relaunch with a bind whose source is now a link: refused"),
        Case("symlink/follow-shadow", "denied ELOOP", "after relaunch, write through the planted link (nosymfollow)"),
        Case("symlink/follow-hostetc", "denied ELOOP", "after relaunch, create a file through a link to /etc"),
        Case("symlink/follow-hostroot", "denied ELOOP", "after relaunch, create a file through a link to /"),
        Case("symlink/follow-inner", "denied ELOOP", "after relaunch, create a file through the replaced directory"),
        Case("symlink/purge-wipe", "contained", "a parent of a scratch source swapped for a link to /persist: "
             "bay0's purge wipes only the scratch, not bay0's state"),
        Case("symlink/host-untouched", "contained", "host /etc/shadow unchanged, no marker in /etc or /"),
        Case("persist/marker", "ok", "a write inside the declared rw /persist bind works"),
        Case("persist/nothing-else", "contained", "after relaunch only the /persist marker exists"),
        Case("exhaust/fd-flood", "contained EMFILE", "open until RLIMIT_NOFILE stops it"),
        Case("exhaust/fork-bomb-rlimit", "contained EAGAIN", "fork until RLIMIT_NPROC stops it"),
        Case("exhaust/launcher-healthy", "ok", "after the floods the launcher still starts a persona"),
        Case("exhaust/fork-bomb-pids-max", "contained", "a fork bomb stops at pids.max", where="qemu"),
        Case("exhaust/memory-balloon", "killed", "a balloon is OOM-killed inside its memory.max "
             "while another persona keeps answering", where="qemu"),
        Case("exhaust/cpu-hog", "contained", "a CPU hog is throttled to cpu.max", where="qemu"),
        Case("persist/reboot", "contained", "writes anywhere but /persist do not survive a reboot", where="qemu"),
        Case("guest/escape-battery", "contained", "the escape battery again inside the booted appliance "
             "(no file capabilities in a pod: fcaps-binary is host-only)", where="qemu"),
        Case("guest/lateral", "contained", "attacker persona vs victim persona in the appliance: abstract "
             "socket, loopback, SysV IPC, environ", where="qemu"),
        Case("guest/console-forgery", "contained", "a persona printing 'bay0: READY slot=B', a CR and an "
             "ANSI clear cannot forge a bay0 console line", where="qemu"),
        Case("guest/output-complete", "ok", "every line a persona prints reaches bay0's console log "
             "(a burst must not silently lose lines)", where="qemu"),
        Case("guest/persist-first-boot", "absent", "the /persist marker does not exist before the first write",
             where="qemu"),
        Case("fault/torn-boot-control", "ok", "a torn write of the newer boot-control copy: boots on the older one", where="qemu"),
        Case("fault/wedged-bay0", "ok", "bay0 stops pinging (spine.test.wedge=1): the i6300esb resets the VM", where="qemu"),
        Case("fault/persist-wrong-flags", "ok", "/persist mounted nodev only (tampered /init): bay0 names it and reboots before READY", where="qemu"),
        Case("fault/root-writable", "ok", "root a read-write tmpfs copy, not dm-verity (tampered /init): bay0 names it and reboots before READY", where="qemu"),
        Case("fault/flash-killed", "ok", "flash killed at every step", where="covered",
             covered_by="tests/test_disk.py::test_flash_killed_at_every_step, ::test_flash_killed_mid_write_at_random_offsets"),
        Case("fault/torn-boot-control-format", "ok", "torn boot-control writes (Python and busybox)", where="covered",
             covered_by="tests/test_bootctl.py::test_torn_write_yields_old_or_new_state, "
                        "tests/test_bootctl_busybox.py::test_torn_shell_writes_are_rejected_by_both_and_the_old_state_wins"),
        Case("fault/one-slot-corrupt", "ok", "one slot corrupt: dm-verity fails, the other slot boots", where="covered",
             covered_by="tests/e2e/test_boot.py::test_corrupt_a_on_its_last_try_is_read_in_full_marked_bad_and_b_boots, "
                        "::test_corrupt_good_slot_out_of_tries_is_caught_at_boot_and_b_boots"),
        Case("fault/both-slots-corrupt", "ok", "both slots corrupt: power off, no shell", where="covered",
             covered_by="tests/e2e/test_boot.py::test_both_slots_corrupt_powers_off_without_a_shell"),
        Case("fault/runtime-corruption", "ok", "corruption met at runtime restarts the machine", where="covered",
             covered_by="tests/e2e/test_boot.py::test_corruption_met_at_runtime_restarts_the_machine_and_costs_a_try"),
        Case("fault/inventory-tampered", "ok", "tampered inventory refused", where="covered",
             covered_by="tests/test_inventory_verify.py::test_tampered_document_is_refused, ::test_any_changed_byte_is_refused"),
        Case("fault/inventory-rolled-back", "ok", "inventory below the floor refused", where="covered",
             covered_by="tests/test_inventory_verify.py::test_rollback_below_the_floor_is_refused"),
        Case("fault/inventory-expired", "ok", "expired inventory refused", where="covered",
             covered_by="tests/test_inventory_verify.py::test_expired_inventory_is_refused"),
        Case("fault/inventory-unknown-key", "ok", "inventory signed by an unknown key refused", where="covered",
             covered_by="tests/test_inventory_verify.py::test_unknown_key_is_refused_before_parsing"),
        Case("fault/inventory-swapped-image", "ok", "inventory pointing at a swapped image refused", where="covered",
             covered_by="tests/test_inventory_verify.py::test_mismatched_identity_names_the_field, "
                        "tests/test_disk_deploy.py::test_deploy_refusals_leave_the_stage_untouched"),
        Case("fault/invariants-unit", "ok", "root rw / not verity, /persist flags: each violation named", where="covered",
             covered_by="tests/test_bay0_invariants.py::test_each_broken_invariant_is_named, "
                        "tests/test_bay0_main.py::test_main_as_pid1_reports_violations_then_reboots"),
    ]
)

BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "duplicate case names"
