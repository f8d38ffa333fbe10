/* The hostile persona: every escape attempt of issue 7, one line per probe.
 *
 *   hostile_probe escape            every escape probe (tests/hostile/cases.py lists them)
 *   hostile_probe NAME...           only these probes
 *   hostile_probe victim PORT       lateral-movement target: listens, holds IPC, waits
 *   hostile_probe attack PID PORT   lateral movement against host pid PID (a victim, or bay0)
 *   hostile_probe killall           kill(-1, SIGKILL) from inside (the victim must survive)
 *   hostile_probe plant DIR         plant symlinks in a read-write /persist bind
 *   hostile_probe follow DIR        try to use the planted links after purge + relaunch
 *   hostile_probe persist DIR       write a marker in DIR and everywhere else it can
 *   hostile_probe fork-bomb | fd-flood | memory-balloon MIB | cpu-hog SECONDS
 *   hostile_probe ids NAME          print NAME's ids (run as the setuid-root copy)
 *
 * Each probe runs in its own forked child so a seccomp kill ends only that probe.
 * Output, one line each:  PROBE <name> <result> <detail>
 *   ok        the call succeeded (for an escape attempt: it got through)
 *   denied    the kernel refused it (detail: errno name)
 *   absent    ENOENT/ESRCH/ENXIO-style: the thing is not there to attack
 *   killed    the child died by a signal (detail: SIGSYS for a seccomp kill)
 *   contained a multi-step check found nothing exposed (detail: what it saw)
 *   exposed   a multi-step check found a way out (detail: which)
 * Built static with the host gcc (glibc), so it runs in the Alpine (musl) root.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define VICTIM_SOCKET "hostile-victim"
#define VICTIM_SHM_KEY 0x484f5354
#define VICTIM_MSG_KEY 0x484f5355
#define SECRET "HOSTILE_SECRET=victim-environment"

static const char *probe_name;

/* ---- reporting ------------------------------------------------------------------ */

static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case ESRCH: return "ESRCH";
    case EACCES: return "EACCES"; case EROFS: return "EROFS"; case ENOSYS: return "ENOSYS";
    case ENXIO: return "ENXIO"; case ENODEV: return "ENODEV"; case EINVAL: return "EINVAL";
    case ECONNREFUSED: return "ECONNREFUSED"; case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case ELOOP: return "ELOOP"; case ETXTBSY: return "ETXTBSY"; case EMFILE: return "EMFILE";
    case EAGAIN: return "EAGAIN"; case ENOTTY: return "ENOTTY"; case EXDEV: return "EXDEV";
    case ENETUNREACH: return "ENETUNREACH"; case EBADF: return "EBADF"; case EISDIR: return "EISDIR";
    case ENOTDIR: return "ENOTDIR"; case EEXIST: return "EEXIST"; case ENOMEM: return "ENOMEM";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT"; case EOPNOTSUPP: return "EOPNOTSUPP";
    default: { static char buf[16]; snprintf(buf, sizeof buf, "E%d", e); return buf; }
    }
}

static void line(const char *result, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(const char *result, const char *fmt, ...) {
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("PROBE %s %s %s\n", probe_name, result, detail[0] ? detail : "-");
    fflush(stdout);
    /* HOSTILE_PACE_MS: a pause after each line, for consoles that forward a bounded
       number of lines per tick (bay0 forwards persona output at most 50 lines a tick) */
    const char *pace = getenv("HOSTILE_PACE_MS");
    if (pace) usleep(atoi(pace) * 1000);
}

/* A call's outcome: ok, or denied/absent by errno. */
static int outcome(long rc, const char *what) {
    if (rc >= 0) { line("ok", "%s returned %ld", what, rc); return 0; }
    int e = errno;
    const char *kind = (e == ENOENT || e == ESRCH || e == ENXIO || e == ENODEV) ? "absent" : "denied";
    line(kind, "%s", errname(e));
    return 0;
}

/* ---- escape probes ---------------------------------------------------------------- */

static int p_fd_leak(void) {
    char seen[300] = "";
    int extra = 0;
    for (int fd = 3; fd < 65536; fd++) {
        if (fcntl(fd, F_GETFD) < 0) continue;
        char path[64], target[200] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n > 0) target[n] = 0;
        extra++;
        size_t len = strlen(seen);
        snprintf(seen + len, sizeof seen - len, "%d->%s;", fd, target);
    }
    if (extra) line("exposed", "open fds beyond 0-2: %s", seen);
    else line("contained", "only fds 0-2 open");
    return 0;
}

static int p_proc_fd_chdir(void) {
    /* CVE-2024-21626: a leaked directory fd reached through /proc/self/fd (or /proc/1/fd). */
    const char *bases[] = {"/proc/self/fd", "/proc/1/fd", "/proc/2/fd"};
    for (unsigned b = 0; b < 3; b++) {
        for (int fd = 0; fd < 256; fd++) {
            char path[64];
            snprintf(path, sizeof path, "%s/%d", bases[b], fd);
            int d = open(path, O_RDONLY | O_DIRECTORY);
            if (d >= 0) { line("exposed", "%s is a directory", path); return 0; }
            if (chdir(path) == 0) { line("exposed", "chdir %s worked", path); return 0; }
        }
    }
    line("contained", "no directory reachable through /proc/{self,1,2}/fd");
    return 0;
}

static int p_cwd_escape(void) {
    struct stat root, here;
    stat("/", &root);
    for (int i = 0; i < 64; i++) if (chdir("..") < 0) break;
    stat(".", &here);
    char cwd[256] = "?";
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, "getcwd:%s", errname(errno));
    if (here.st_dev == root.st_dev && here.st_ino == root.st_ino && strcmp(cwd, "/") == 0)
        line("contained", "cwd stays at / (getcwd %s)", cwd);
    else line("exposed", "cwd left the root: getcwd %s", cwd);
    return 0;
}

static int p_open_write(const char *path) { return outcome(open(path, O_WRONLY), path); }
static int p_open_rdwr(const char *path) { return outcome(open(path, O_RDWR), path); }
static int p_open_read(const char *path) { return outcome(open(path, O_RDONLY), path); }

static int p_write_outside_persist(void) {
    const char *paths[] = {"/hostile-marker", "/tmp/hostile-marker", "/etc/hostile-marker",
                           "/var/tmp/hostile-marker", "/root/hostile-marker", "/dev/hostile-marker",
                           "/dev/shm/hostile-marker", "/run/hostile-marker", "/proc/hostile-marker",
                           "/usr/local/bin/hostile-marker"};
    char wrote[300] = "";
    for (unsigned i = 0; i < sizeof paths / sizeof *paths; i++) {
        int fd = open(paths[i], O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd >= 0) { size_t l = strlen(wrote); snprintf(wrote + l, sizeof wrote - l, "%s ", paths[i]); close(fd); }
    }
    if (wrote[0]) line("exposed", "wrote %s", wrote);
    else line("contained", "no writable place outside the declared binds");
    return 0;
}

static int p_masked_read(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return outcome(-1, path);
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) line("contained", "%s reads empty", path);
    else line("exposed", "%s gave %zd bytes", path, n);
    return 0;
}

static int p_mount(const char *src, const char *target, const char *type, const char *data) {
    return outcome(mount(src, target, type, 0, data), "mount");
}

static int p_mknod(mode_t type, int major, int minor) {
    const char *dirs[] = {"/persist-rw", "/srv", "/tmp", "/"};
    long rc = -1;
    for (unsigned i = 0; i < 4; i++) {
        char path[64];
        snprintf(path, sizeof path, "%s/hostile-node", dirs[i]);
        rc = mknod(path, type | 0666, makedev(major, minor));
        if (rc == 0) {
            int fd = open(path, O_RDONLY);
            int e = errno;
            unlink(path);
            if (fd >= 0) { line("exposed", "made and opened %s", path); return 0; }
            line("denied", "made %s but open failed %s", path, errname(e));
            return 0;
        }
    }
    return outcome(rc, "mknod");
}

static int p_block_devices(void) {
    const char *paths[] = {"/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0", "/dev/loop-control",
                           "/dev/mapper/control", "/dev/dm-0", "/dev/ram0", "/dev/mem", "/dev/port"};
    char found[300] = "";
    for (unsigned i = 0; i < sizeof paths / sizeof *paths; i++) {
        struct stat st;
        if (stat(paths[i], &st) == 0) { size_t l = strlen(found); snprintf(found + l, sizeof found - l, "%s ", paths[i]); }
    }
    if (found[0]) line("exposed", "present: %s", found);
    else line("contained", "no block or memory device node");
    return 0;
}

static int p_ioctl(unsigned long cmd) {
    char c = 'x';
    return outcome(syscall(SYS_ioctl, 0, cmd, &c), "ioctl");
}

static int p_clone3_newuser(void) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long rc = syscall(SYS_clone3, &args, sizeof args);
    if (rc == 0) _exit(0);
    return outcome(rc, "clone3");
}

static int p_clone_newuser(void) {
    long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (rc == 0) _exit(0);
    return outcome(rc, "clone");
}

static long ia32_syscall(long nr, long a) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a) : "memory");
    return ret;
}

static int p_ia32(long nr, long arg) {
    long rc = ia32_syscall(nr, arg);
    if (rc < 0) { errno = (int)-rc; rc = -1; }
    return outcome(rc, "int 0x80");
}

static int p_socket(int family, int type, int proto) { return outcome(socket(family, type, proto), "socket"); }

static int p_mountinfo_propagation(void) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f) return outcome(-1, "mountinfo");
    char buf[1024], bad[300] = "";
    int mounts = 0;
    while (fgets(buf, sizeof buf, f)) {
        mounts++;
        char *sep = strstr(buf, " - ");
        if (sep) *sep = 0;
        if (strstr(buf, " shared:") || strstr(buf, " master:")) {
            char *fields[6] = {0};
            char *s = buf;
            for (int i = 0; i < 5 && s; i++) { fields[i] = strsep(&s, " "); }
            size_t l = strlen(bad);
            snprintf(bad + l, sizeof bad - l, "%s ", fields[4] ? fields[4] : "?");
        }
    }
    fclose(f);
    if (bad[0]) line("exposed", "propagating mounts: %s", bad);
    else line("contained", "%d mounts, all private", mounts);
    return 0;
}

/* exec a privileged copy of this program (setuid root, or file capabilities) and relay its line */
static int exec_ids(const char *path, const char *name) {
    int pipefd[2];
    if (pipe(pipefd) < 0) return outcome(-1, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 1);
        char *argv[] = {(char *)path, "ids", (char *)name, NULL};
        char *envp[] = {NULL};
        execve(path, argv, envp);
        printf("PROBE %s denied exec:%s\n", name, errname(errno));
        _exit(0);
    }
    close(pipefd[1]);
    char buf[512];
    ssize_t n = read(pipefd[0], buf, sizeof buf - 1);
    waitpid(pid, NULL, 0);
    if (n <= 0) { line("killed", "the privileged copy printed nothing"); return 0; }
    buf[n] = 0;
    fputs(buf, stdout);
    fflush(stdout);
    return 0;
}

/* The read-only layer under the uid check: these /proc paths must be read-only mounts. */
static int p_proc_readonly(void) {
    const char *want[] = {"/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger"};
    int found[5] = {0};
    char bad[200] = "";
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f) return outcome(-1, "mountinfo");
    char buf[1024];
    while (fgets(buf, sizeof buf, f)) {
        char *fields[6] = {0}, *s = buf;
        for (int i = 0; i < 6 && s; i++) fields[i] = strsep(&s, " ");
        if (!fields[5]) continue;
        for (int i = 0; i < 5; i++) {
            if (strcmp(fields[4], want[i])) continue;
            found[i] = 1;
            if (strncmp(fields[5], "ro", 2) || (fields[5][2] && fields[5][2] != ',')) {
                size_t l = strlen(bad); snprintf(bad + l, sizeof bad - l, "%s(%s) ", want[i], fields[5]);
            }
        }
    }
    fclose(f);
    char missing[200] = "";
    for (int i = 0; i < 5; i++) if (!found[i] && access(want[i], F_OK) == 0) {
        size_t l = strlen(missing); snprintf(missing + l, sizeof missing - l, "%s ", want[i]);
    }
    if (bad[0] || missing[0]) line("exposed", "writable: %s not mounted read-only: %s", bad, missing);
    else line("contained", "/proc/sys, bus, fs, irq, sysrq-trigger read-only (where present)");
    return 0;
}

static int p_setuid_binary(void) { return exec_ids("/usr/local/bin/hostile_probe_suid", "setuid-binary"); }
static int p_fcaps_binary(void) { return exec_ids("/usr/local/bin/hostile_probe_fcaps", "fcaps-binary"); }

static int status_fields(char *out, size_t size, int *privileged) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char buf[256];
    *privileged = 0;
    out[0] = 0;
    while (fgets(buf, sizeof buf, f)) {
        char key[32];
        unsigned long long value;
        if (sscanf(buf, "%31[^:]:\t%llx", key, &value) != 2) continue;
        int cap = !strncmp(key, "Cap", 3);
        if (!cap && strcmp(key, "NoNewPrivs") && strcmp(key, "Seccomp")) continue;
        if (cap && value) *privileged = 1;
        if (!strcmp(key, "NoNewPrivs") && value != 1) *privileged = 1;
        if (!strcmp(key, "Seccomp") && value != 2) *privileged = 1;
        size_t l = strlen(out);
        snprintf(out + l, size - l, "%s=%llx ", key, value);
    }
    fclose(f);
    return 0;
}

static int p_capabilities(void) {
    char fields[300];
    int privileged;
    if (status_fields(fields, sizeof fields, &privileged) < 0) return outcome(-1, "status");
    line(privileged ? "exposed" : "contained", "%s", fields);
    return 0;
}

static int p_kill_pid1(void) {
    kill(1, SIGKILL);
    kill(1, SIGSTOP);
    usleep(100000);
    if (kill(1, 0) == 0 || errno == EPERM) line("contained", "PID 1 still alive after SIGKILL/SIGSTOP");
    else line("exposed", "PID 1 gone: %s", errname(errno));
    return 0;
}

static int p_proc_visible(void) {
    DIR *d = opendir("/proc");
    if (!d) return outcome(-1, "/proc");
    struct dirent *e;
    char seen[200] = "";
    int pid1 = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        if (!strcmp(e->d_name, "1")) pid1 = 1;
        size_t l = strlen(seen);
        snprintf(seen + l, sizeof seen - l, "%s ", e->d_name);
    }
    closedir(d);
    if (pid1) line("exposed", "PID 1 (bay0's fork) visible: %s", seen);
    else line("contained", "visible pids: %s", seen);
    return 0;
}

static int p_memfd_exec(void) {
    int src = open("/proc/self/exe", O_RDONLY);
    long fd = syscall(SYS_memfd_create, "hostile", 0);
    if (src < 0 || fd < 0) return outcome(-1, "memfd_create");
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0) if (write((int)fd, buf, n) != n) break;
    char *argv[] = {"memfd", "ran", "memfd-exec", NULL};
    char *envp[] = {NULL};
    syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
    return outcome(-1, "execveat");
}

static int p_ptrace_pid1(void) { return outcome(syscall(SYS_ptrace, 16 /* ATTACH */, 1, 0, 0), "ptrace"); }

static int p_fork_bomb(void) {
    int count = 0;
    pid_t first = 0;
    int e = 0;
    for (;;) {
        pid_t pid = fork();
        if (pid == 0) { pause(); _exit(0); }
        if (pid < 0) { e = errno; break; }
        if (!first) first = pid;
        if (++count >= 100000) break;
    }
    line(e ? "contained" : "exposed", "fork failed with %s after %d children", e ? errname(e) : "nothing", count);
    kill(0, SIGKILL);  /* our own process group: the bomb's children, and us */
    return 0;
}

static int p_fd_flood(void) {
    int count = 0, e = 0;
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0) { e = errno; break; }
        if (++count > 1000000) break;
    }
    line(e ? "contained" : "exposed", "open failed with %s after %d fds", e ? errname(e) : "nothing", count);
    return 0;
}

static int p_memory_balloon(long mib) {
    long done = 0;
    for (; done < mib; done++) {
        char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) break;
        memset(p, 0x5a, 1 << 20);
        if (done % 16 == 0) { printf("BALLOON %ld MiB\n", done); fflush(stdout); }
    }
    line("exposed", "allocated %ld MiB without being stopped", done);
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int p_cpu_hog(double seconds) {
    double start = now();
    volatile unsigned long spin = 0;
    while (now() - start < seconds) for (int i = 0; i < 100000; i++) spin++;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    line("ok", "cpu_share=%.3f over %.1fs", cpu / (now() - start), now() - start);
    return 0;
}

/* ---- the probe table ---------------------------------------------------------------- */

struct probe { const char *name; int (*run)(void); };

#define P(n, body) static int n(void) { return body; }
P(pr_proc1_exe, p_open_write("/proc/1/exe"))
P(pr_proc1_mem, p_open_rdwr("/proc/1/mem"))
P(pr_proc1_environ, p_open_read("/proc/1/environ"))
P(pr_self_exe, p_open_write("/proc/self/exe"))
P(pr_image_write, p_open_write("/bin/busybox"))
P(pr_core_pattern, p_open_write("/proc/sys/kernel/core_pattern"))
P(pr_modprobe, p_open_write("/proc/sys/kernel/modprobe"))
P(pr_sysrq, p_open_write("/proc/sysrq-trigger"))
P(pr_uevent, p_open_write("/sys/kernel/uevent_helper"))
P(pr_kcore, p_masked_read("/proc/kcore"))
P(pr_keys, p_masked_read("/proc/keys"))
P(pr_kallsyms, p_masked_read("/proc/kallsyms"))
P(pr_mount_sysfs, p_mount("sysfs", "/sys", "sysfs", NULL))
P(pr_cgroup1, p_mount("cgroup", "/sys", "cgroup", "rdma"))
P(pr_mount_tmpfs, p_mount("tmpfs", "/mnt", "tmpfs", NULL))
P(pr_mknod_blk, p_mknod(S_IFBLK, 8, 0))
P(pr_mknod_chr, p_mknod(S_IFCHR, 1, 1))
P(pr_dev_mem, p_open_read("/dev/mem"))
P(pr_dev_kmsg, p_open_rdwr("/dev/kmsg"))
P(pr_dev_watchdog, p_open_write("/dev/watchdog"))
P(pr_dev_watchdog0, p_open_write("/dev/watchdog0"))
P(pr_dev_console, p_open_write("/dev/console"))
P(pr_dev_tty, p_open_rdwr("/dev/tty"))
P(pr_tiocsti, p_ioctl(TIOCSTI))
P(pr_tiocsti_high, p_ioctl(0xffffffff00000000UL | TIOCSTI))
P(pr_tioclinux, p_ioctl(TIOCLINUX))
P(pr_unshare_user, outcome(syscall(SYS_unshare, CLONE_NEWUSER), "unshare"))
P(pr_unshare_mnt, outcome(syscall(SYS_unshare, CLONE_NEWNS), "unshare"))
P(pr_setns, outcome(syscall(SYS_setns, 0, 0), "setns"))
P(pr_io_uring, outcome(syscall(SYS_io_uring_setup, 1, NULL), "io_uring_setup"))
P(pr_af_alg, p_socket(38, SOCK_SEQPACKET, 0))
P(pr_af_vsock, p_socket(40, SOCK_STREAM, 0))
P(pr_af_packet, p_socket(17, SOCK_RAW, 0))
P(pr_af_key, p_socket(15, SOCK_RAW, 2))
P(pr_af_netlink_audit, p_socket(16, SOCK_RAW, 9))
P(pr_ia32_unshare, p_ia32(310 /* i386 unshare */, CLONE_NEWUSER))
P(pr_ia32_getpid, p_ia32(20 /* i386 getpid */, 0))
P(pr_x32_unshare, outcome(syscall(0x40000000 | SYS_unshare, CLONE_NEWUSER), "x32 unshare"))
P(pr_x32_getpid, outcome(syscall(0x40000000 | SYS_getpid), "x32 getpid"))
P(pr_setuid0, outcome(setuid(0), "setuid"))
P(pr_chroot, outcome(chroot("/"), "chroot"))
P(pr_ptrace_me, outcome(syscall(SYS_ptrace, 0, 0, 0, 0), "ptrace"))
P(pr_vm_readv, outcome(syscall(SYS_process_vm_readv, 1, NULL, 0, NULL, 0, 0), "process_vm_readv"))
P(pr_keyctl, outcome(syscall(SYS_keyctl, 0, 0, 0, 0, 0), "keyctl"))
P(pr_bpf, outcome(syscall(SYS_bpf, 0, NULL, 0), "bpf"))
P(pr_perf, outcome(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0), "perf_event_open"))
P(pr_userfaultfd, outcome(syscall(SYS_userfaultfd, 0), "userfaultfd"))
P(pr_open_by_handle, outcome(syscall(SYS_open_by_handle_at, 0, NULL, 0), "open_by_handle_at"))
P(pr_init_module, outcome(syscall(SYS_init_module, NULL, 0, ""), "init_module"))
P(pr_kexec, outcome(syscall(SYS_kexec_load, 0, 0, NULL, 0), "kexec_load"))
P(pr_reboot, outcome(syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321FEDC, NULL), "reboot"))
P(pr_syslog, outcome(syscall(SYS_syslog, 3, NULL, 0), "syslog"))
P(pr_personality, outcome(syscall(SYS_personality, 0x0400000 /* READ_IMPLIES_EXEC */), "personality"))
P(pr_sethostname, outcome(sethostname("pwned", 5), "sethostname"))
P(pr_modify_ldt, outcome(syscall(SYS_modify_ldt, 0, NULL, 0), "modify_ldt"))
P(pr_iopl, outcome(syscall(SYS_iopl, 3), "iopl"))
P(pr_pivot_root, outcome(syscall(SYS_pivot_root, "/", "/"), "pivot_root"))
P(pr_fsopen, outcome(syscall(SYS_fsopen, "tmpfs", 0), "fsopen"))
P(pr_open_tree, outcome(syscall(SYS_open_tree, AT_FDCWD, "/", 1), "open_tree"))
P(pr_pidfd_getfd, outcome(syscall(SYS_pidfd_getfd, 0, 0, 0), "pidfd_getfd"))

static const struct probe ESCAPES[] = {
    {"fd-leak", p_fd_leak}, {"proc-fd-chdir", p_proc_fd_chdir}, {"cwd-escape", p_cwd_escape},
    {"proc1-exe-write", pr_proc1_exe}, {"proc1-mem", pr_proc1_mem}, {"proc1-environ", pr_proc1_environ},
    {"self-exe-write", pr_self_exe}, {"image-write", pr_image_write},
    {"write-outside-persist", p_write_outside_persist},
    {"proc-readonly", p_proc_readonly}, {"core-pattern", pr_core_pattern}, {"modprobe-path", pr_modprobe}, {"sysrq-trigger", pr_sysrq},
    {"uevent-helper", pr_uevent}, {"proc-kcore", pr_kcore}, {"proc-keys", pr_keys},
    {"proc-kallsyms", pr_kallsyms}, {"mount-sysfs", pr_mount_sysfs}, {"cgroup1-release-agent", pr_cgroup1},
    {"mknod-block", pr_mknod_blk}, {"mknod-mem", pr_mknod_chr}, {"block-devices", p_block_devices},
    {"dev-mem", pr_dev_mem}, {"dev-kmsg", pr_dev_kmsg}, {"dev-watchdog", pr_dev_watchdog},
    {"dev-watchdog0", pr_dev_watchdog0}, {"dev-console", pr_dev_console}, {"dev-tty", pr_dev_tty},
    {"tiocsti", pr_tiocsti}, {"tiocsti-high-bits", pr_tiocsti_high}, {"tioclinux", pr_tioclinux},
    {"unshare-user", pr_unshare_user}, {"unshare-mount", pr_unshare_mnt},
    {"clone-newuser", p_clone_newuser}, {"clone3-newuser", p_clone3_newuser}, {"setns", pr_setns},
    {"io-uring", pr_io_uring}, {"af-alg", pr_af_alg}, {"af-vsock", pr_af_vsock},
    {"af-packet", pr_af_packet}, {"af-key", pr_af_key}, {"af-netlink-audit", pr_af_netlink_audit},
    {"ia32-unshare", pr_ia32_unshare}, {"ia32-getpid", pr_ia32_getpid},
    {"x32-unshare", pr_x32_unshare}, {"x32-getpid", pr_x32_getpid},
    {"mount-tmpfs", pr_mount_tmpfs}, {"mount-propagation", p_mountinfo_propagation},
    {"setuid-binary", p_setuid_binary}, {"fcaps-binary", p_fcaps_binary}, {"setuid-0", pr_setuid0},
    {"capabilities", p_capabilities}, {"ptrace-pid1", p_ptrace_pid1}, {"proc-pids-visible", p_proc_visible},
    {"memfd-exec", p_memfd_exec},
    {"chroot", pr_chroot}, {"ptrace-traceme", pr_ptrace_me}, {"process-vm-readv", pr_vm_readv},
    {"keyctl", pr_keyctl}, {"bpf", pr_bpf}, {"perf-event-open", pr_perf}, {"userfaultfd", pr_userfaultfd},
    {"open-by-handle-at", pr_open_by_handle}, {"init-module", pr_init_module}, {"kexec-load", pr_kexec},
    {"reboot", pr_reboot}, {"syslog", pr_syslog}, {"personality", pr_personality},
    {"sethostname", pr_sethostname}, {"modify-ldt", pr_modify_ldt}, {"iopl", pr_iopl},
    {"pivot-root", pr_pivot_root}, {"fsopen", pr_fsopen}, {"open-tree", pr_open_tree},
    {"pidfd-getfd", pr_pidfd_getfd},
    {"kill-pid1", p_kill_pid1},  /* last: if it worked, nothing after it would run */
};
#define N_ESCAPES (sizeof ESCAPES / sizeof *ESCAPES)

static const char *signame(int sig) {
    switch (sig) {
    case SIGSYS: return "SIGSYS"; case SIGKILL: return "SIGKILL"; case SIGSEGV: return "SIGSEGV";
    case SIGALRM: return "SIGALRM"; case SIGABRT: return "SIGABRT"; case SIGBUS: return "SIGBUS";
    default: { static char buf[16]; snprintf(buf, sizeof buf, "SIG%d", sig); return buf; }
    }
}

/* Run one probe in a child; a signal death is reported by the parent. */
static void run_isolated(const char *name, int (*fn)(void), unsigned timeout) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { probe_name = name; line("error", "fork %s", errname(errno)); return; }
    if (pid == 0) {
        probe_name = name;
        setpgid(0, 0);  /* the fork bomb kills its own group, not us */
        alarm(timeout);
        _exit(fn());
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    probe_name = name;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) line("error", "timed out after %us", timeout);
    else if (WIFSIGNALED(status) && !(WTERMSIG(status) == SIGKILL && !strcmp(name, "fork-bomb")))
        line("killed", "%s", signame(WTERMSIG(status)));
}

/* ---- lateral movement -------------------------------------------------------------- */

static int victim(int port) {
    probe_name = "victim";
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un ua = {.sun_family = AF_UNIX};
    memcpy(ua.sun_path + 1, VICTIM_SOCKET, strlen(VICTIM_SOCKET));
    socklen_t ulen = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(VICTIM_SOCKET);
    int ok_unix = u >= 0 && bind(u, (struct sockaddr *)&ua, ulen) == 0 && listen(u, 8) == 0;
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in ta = {.sin_family = AF_INET, .sin_port = htons(port)};
    ta.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int ok_tcp = t >= 0 && bind(t, (struct sockaddr *)&ta, sizeof ta) == 0 && listen(t, 8) == 0;
    int shm = shmget(VICTIM_SHM_KEY, 4096, IPC_CREAT | 0666);
    int msg = msgget(VICTIM_MSG_KEY, IPC_CREAT | 0666);
    /* Self-checks: the victim must reach its own endpoints, or the attacker's failure proves nothing. */
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    int self_unix = connect(c, (struct sockaddr *)&ua, ulen) == 0;
    int c2 = socket(AF_INET, SOCK_STREAM, 0);
    int self_tcp = connect(c2, (struct sockaddr *)&ta, sizeof ta) == 0;
    printf("VICTIM READY unix=%d tcp=%d shm=%d msg=%d self_unix=%d self_tcp=%d\n",
           ok_unix, ok_tcp, shm >= 0, msg >= 0, self_unix, self_tcp);
    fflush(stdout);
    for (;;) pause();
    return 0;
}

static int environ_scan(void) {
    DIR *d = opendir("/proc");
    if (!d) return outcome(-1, "/proc");
    struct dirent *e;
    int scanned = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[64], buf[8192];
        snprintf(path, sizeof path, "/proc/%s/environ", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        scanned++;
        if (n > 0 && memmem(buf, n, "HOSTILE_SECRET", 14)) { line("exposed", "secret read from %s", path); return 0; }
    }
    closedir(d);
    line("contained", "secret in none of %d readable environs", scanned);
    return 0;
}

static int target_pid, target_port;

static int a_kill(void) { return outcome(kill(target_pid, SIGKILL), "kill"); }
static int a_signal0(void) { return outcome(kill(target_pid, 0), "kill 0"); }
static int a_pidfd(void) { return outcome(syscall(SYS_pidfd_open, target_pid, 0), "pidfd_open"); }
static int a_ptrace(void) { return outcome(syscall(SYS_ptrace, 16, target_pid, 0, 0), "ptrace"); }
static int a_environ(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", target_pid);
    return outcome(open(path, O_RDONLY), path);
}
static int a_root(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/root/", target_pid);
    return outcome(open(path, O_RDONLY | O_DIRECTORY), path);
}
static int a_abstract(void) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un ua = {.sun_family = AF_UNIX};
    memcpy(ua.sun_path + 1, VICTIM_SOCKET, strlen(VICTIM_SOCKET));
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(VICTIM_SOCKET);
    return outcome(connect(s, (struct sockaddr *)&ua, len), "connect @" VICTIM_SOCKET);
}
static int a_loopback(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return outcome(-1, "socket");
    struct sockaddr_in ta = {.sin_family = AF_INET, .sin_port = htons(target_port)};
    ta.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return outcome(connect(s, (struct sockaddr *)&ta, sizeof ta), "connect 127.0.0.1");
}
static int a_shm(void) { return outcome(shmget(VICTIM_SHM_KEY, 0, 0), "shmget"); }
static int a_msg(void) { return outcome(msgget(VICTIM_MSG_KEY, 0), "msgget"); }
static int a_posix_shm(void) { return outcome(open("/dev/shm/hostile", O_RDWR | O_CREAT, 0666), "/dev/shm"); }

static const struct probe ATTACKS[] = {
    {"kill", a_kill}, {"signal0", a_signal0}, {"pidfd-open", a_pidfd}, {"ptrace", a_ptrace},
    {"environ", a_environ}, {"environ-scan", environ_scan}, {"proc-root", a_root},
    {"abstract-unix", a_abstract}, {"loopback", a_loopback}, {"sysv-shm", a_shm},
    {"sysv-msg", a_msg}, {"posix-shm", a_posix_shm},
};

static int attack(int pid, int port, const char *prefix) {
    target_pid = pid;
    target_port = port;
    for (unsigned i = 0; i < sizeof ATTACKS / sizeof *ATTACKS; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s/%s", prefix, ATTACKS[i].name);
        run_isolated(strdup(name), ATTACKS[i].run, 10);
    }
    return 0;
}

/* ---- /persist symlink planting and persistence ------------------------------------------- */

static int plant(const char *dir) {
    char path[256];
    probe_name = "plant";
    const struct { const char *name, *target; } links[] = {
        {"shadow", "/etc/shadow"}, {"hostetc", "/etc"}, {"hostroot", "/"},
        {"proc1root", "/proc/1/root"},
    };
    int made = 0;
    for (unsigned i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, links[i].name);
        if (symlink(links[i].target, path) == 0) made++;
    }
    /* replace a directory that a later bind names as its source with a link to host /etc */
    snprintf(path, sizeof path, "%s/inner", dir);
    rmdir(path);
    if (symlink("/etc", path) == 0) made++;
    line(made == 5 ? "ok" : "denied", "planted %d links", made);
    return 0;
}

static int follow(const char *dir) {
    char path[256];
    const char *tries[] = {"shadow", "hostetc/hostile-marker", "hostroot/hostile-marker", "inner/hostile-marker"};
    for (unsigned i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, tries[i]);
        char name[64];
        snprintf(name, sizeof name, "follow-%s", tries[i]);
        *strchrnul(name, '/') = 0;
        probe_name = name;
        outcome(open(path, O_WRONLY | O_CREAT | O_APPEND, 0600), path);
    }
    return 0;
}

static int persist(const char *dir) {
    char path[256];
    snprintf(path, sizeof path, "%s/persisted-marker", dir);
    probe_name = "persist-before";
    line(access(path, F_OK) == 0 ? "present" : "absent", "%s", path);
    probe_name = "persist-marker";
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) { write(fd, "survives\n", 9); close(fd); }
    outcome(fd, path);
    run_isolated("write-outside-persist", p_write_outside_persist, 10);
    return 0;
}

static int ids(const char *name) {
    probe_name = name;
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    char fields[300];
    int privileged;
    status_fields(fields, sizeof fields, &privileged);
    line(e == 0 || s == 0 || privileged ? "exposed" : "contained", "ruid=%d euid=%d suid=%d %s", r, e, s, fields);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: hostile_probe escape|NAME...|victim|attack|...\n"); return 2; }
    const char *mode = argv[1];
    if (!strcmp(mode, "escape")) {
        for (unsigned i = 0; i < N_ESCAPES; i++) run_isolated(ESCAPES[i].name, ESCAPES[i].run, 10);
        printf("PROBES DONE\n");
        return 0;
    }
    if (!strcmp(mode, "victim") && argc == 3) return victim(atoi(argv[2]));
    if (!strcmp(mode, "attack") && argc == 5) { attack(atoi(argv[2]), atoi(argv[3]), argv[4]); printf("PROBES DONE\n"); return 0; }
    if (!strcmp(mode, "killall")) {
        kill(-1, SIGKILL);
        probe_name = "kill-all";
        line("ok", "kill(-1) returned and we survived");
        return 0;
    }
    if (!strcmp(mode, "plant") && argc == 3) return plant(argv[2]);
    if (!strcmp(mode, "follow") && argc == 3) return follow(argv[2]);
    if (!strcmp(mode, "persist") && argc == 3) return persist(argv[2]);
    if (!strcmp(mode, "ids") && argc == 3) return ids(argv[2]);
    if (!strcmp(mode, "ran") && argc == 3) { probe_name = argv[2]; line("ok", "an ELF ran from a memfd"); return 0; }
    if (!strcmp(mode, "fork-bomb")) { run_isolated("fork-bomb", p_fork_bomb, 60); return 0; }
    if (!strcmp(mode, "fd-flood")) { run_isolated("fd-flood", p_fd_flood, 30); return 0; }
    if (!strcmp(mode, "memory-balloon") && argc == 3) { probe_name = "memory-balloon"; return p_memory_balloon(atol(argv[2])); }
    if (!strcmp(mode, "cpu-hog") && argc == 3) { probe_name = "cpu-hog"; return p_cpu_hog(atof(argv[2])); }
    for (int i = 1; i < argc; i++) {
        unsigned j;
        for (j = 0; j < N_ESCAPES; j++)
            if (!strcmp(argv[i], ESCAPES[j].name)) { run_isolated(ESCAPES[j].name, ESCAPES[j].run, 10); break; }
        if (j == N_ESCAPES) { probe_name = argv[i]; line("error", "unknown probe"); }
    }
    return 0;
}
