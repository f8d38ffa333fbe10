"""The persona seccomp allowlists, by profile name (x86_64 syscall names).

Built from Docker's default profile (moby/profiles ``seccomp/default.json``) minus every
capability-conditional rule and the exploit primitives it still allows, then tightened
as ``docs/implementation/sandbox.md`` explains: ptrace, process_vm_*, modify_ldt,
userfaultfd, keyctl and the mount/namespace calls are absent, so they kill the process.
Calls listed in ``ARGUMENT_FILTERED`` are allowed only for some argument values.
"""

from __future__ import annotations

from bay0.formats.inventory import SECCOMP_PROFILES

# The profile names an inventory may give (the inventory schema owns the set).
PROFILES = tuple(SECCOMP_PROFILES)

# Hot calls first: the filter compares in this order.
BASE = """
read write close futex epoll_wait epoll_pwait epoll_pwait2 epoll_ctl poll ppoll select pselect6
mmap munmap mprotect brk madvise mremap
openat openat2 open fstat newfstatat stat lstat statx lseek pread64 pwrite64 readv writev
preadv pwritev preadv2 pwritev2 getdents64 getdents fcntl dup dup2 dup3 pipe pipe2
rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigqueueinfo
rt_sigsuspend rt_tgsigqueueinfo sigaltstack restart_syscall
clock_gettime clock_getres clock_nanosleep nanosleep gettimeofday time
getpid getppid gettid getuid geteuid getgid getegid getresuid getresgid getgroups
getpgid getpgrp getsid setpgid setsid setuid setgid setreuid setregid setresuid setresgid
setfsuid setfsgid setgroups capget capset
exit exit_group wait4 waitid kill tkill tgkill pidfd_open pidfd_send_signal
fork vfork execve execveat set_tid_address set_robust_list get_robust_list rseq
arch_prctl prctl getrlimit setrlimit prlimit64 getrusage times sysinfo uname umask
sched_yield sched_getaffinity sched_setaffinity sched_getparam sched_setparam
sched_getscheduler sched_setscheduler sched_get_priority_max sched_get_priority_min
sched_rr_get_interval sched_getattr sched_setattr getpriority setpriority getcpu
ioprio_get ioprio_set membarrier
access faccessat faccessat2 chdir fchdir getcwd mkdir mkdirat rmdir rename renameat renameat2
link linkat unlink unlinkat symlink symlinkat readlink readlinkat creat truncate ftruncate
chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat utime utimes utimensat futimesat
statfs fstatfs fsync fdatasync syncfs sync sync_file_range fallocate fadvise64 readahead flock
copy_file_range sendfile splice tee vmsplice close_range
getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr setxattr lsetxattr fsetxattr
removexattr lremovexattr fremovexattr getxattrat listxattrat setxattrat removexattrat
file_getattr file_setattr
inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime timerfd_gettime
epoll_create epoll_create1
timer_create timer_settime timer_gettime timer_getoverrun timer_delete
getitimer setitimer alarm pause
msync mincore mlock mlock2 munlock mlockall munlockall remap_file_pages
pkey_alloc pkey_free pkey_mprotect getrandom mseal map_shadow_stack cachestat
futex_waitv futex_wake futex_wait futex_requeue
shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl
mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr
io_setup io_destroy io_getevents io_pgetevents io_submit io_cancel
set_thread_area get_thread_area
landlock_create_ruleset landlock_add_rule landlock_restrict_self seccomp
connect accept accept4 bind listen shutdown getsockname getpeername
sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg setsockopt getsockopt
""".split()

# Allowed only for some argument values (checked in seccomp.py).
ARGUMENT_FILTERED = ("socket", "socketpair", "ioctl", "clone", "personality", "mknod", "mknodat")

# Answered ENOSYS so libc falls back: clone3 (BPF cannot read its flags) and io_uring
# (a rich source of kernel bugs; the fallback is ordinary I/O).
ENOSYS = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")

# Answered EPERM: memfd_create makes an anonymous, executable file, so an ELF written
# into it would run from outside the signed image (execveat/AT_EMPTY_PATH or
# /proc/self/fd/N) although every writable mount is noexec; vm.memfd_noexec only
# exists from Linux 6.3. Programs see an ordinary "not permitted".
EPERM = ("memfd_create",)

# socket families (linux/socket.h)
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
NETLINK_ROUTE = 0


def socket_families(profile: str, networked: bool) -> tuple[int, ...]:
    """The address families ``socket(2)`` may open (``socketpair``: AF_UNIX among them).

    batch: none at all; default: AF_UNIX; network-service: AF_UNIX, AF_INET, AF_INET6,
    plus AF_NETLINK (NETLINK_ROUTE only, for address lookups) when it has a veth.
    """
    if profile == "batch":
        return ()
    if profile == "network-service":
        return (AF_UNIX, AF_INET, AF_INET6) + ((AF_NETLINK,) if networked else ())
    return (AF_UNIX,)
