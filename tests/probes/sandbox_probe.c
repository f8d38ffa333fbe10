/* Escape probes run inside a persona by tests/test_persona_sandbox.py.
 *
 * `sandbox_probe CASE` tries one thing and prints `CASE ok` if it worked or
 * `CASE errno=N` if the kernel refused it. A seccomp kill shows as SIGSYS in the
 * persona's exit status instead (nothing is printed). Built static, so it runs in
 * the Alpine (musl) test root.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

static int report(const char *name, long rc) {
    if (rc < 0) printf("%s errno=%d\n", name, errno);
    else printf("%s ok\n", name);
    fflush(stdout);
    return 0;
}

static long ia32_getpid(void) {
    long ret;
    /* i386 getpid is 20; any syscall through int 0x80 has arch AUDIT_ARCH_I386 */
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory");
    return ret;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *c = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(c, "unshare-user")) return report(c, syscall(SYS_unshare, CLONE_NEWUSER));
    if (!strcmp(c, "mount")) return report(c, mount("none", "/tmp", "tmpfs", 0, NULL));
    if (!strcmp(c, "ptrace")) return report(c, syscall(SYS_ptrace, 0 /* TRACEME */, 0, 0, 0));
    if (!strcmp(c, "keyctl")) return report(c, syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    if (!strcmp(c, "af-packet")) return report(c, socket(17 /* AF_PACKET */, SOCK_RAW, 0));
    if (!strcmp(c, "af-alg")) return report(c, socket(38 /* AF_ALG */, SOCK_SEQPACKET, 0));
    if (!strcmp(c, "af-vsock")) return report(c, socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
    if (!strcmp(c, "af-unix")) return report(c, socket(AF_UNIX, SOCK_STREAM, 0));
    if (!strcmp(c, "af-inet")) return report(c, socket(AF_INET, SOCK_STREAM, 0));
    if (!strcmp(c, "ia32")) return report(c, ia32_getpid());
    if (!strcmp(c, "x32")) return report(c, syscall(0x40000000 | SYS_getpid));
    if (!strcmp(c, "clone3")) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_NEWUSER;
        return report(c, syscall(SYS_clone3, &args, sizeof args));
    }
    if (!strcmp(c, "clone-newns")) return report(c, syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(c, "io-uring")) return report(c, syscall(425 /* io_uring_setup */, 1, NULL));
    if (!strcmp(c, "tiocsti")) { char ch = 'x'; return report(c, syscall(SYS_ioctl, 0, TIOCSTI, &ch)); }
    if (!strcmp(c, "tiocsti-high")) {
        char ch = 'x';
        return report(c, syscall(SYS_ioctl, 0, 0x100000000UL | TIOCSTI, &ch));
    }
    if (!strcmp(c, "personality")) return report(c, syscall(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */));
    if (!strcmp(c, "mknod-blk")) return report(c, mknod("/tmp/blk", S_IFBLK | 0600, makedev(8, 0)));
    if (!strcmp(c, "newer-than-table")) return report(c, syscall(1000));
    if (!strcmp(c, "setuid-root")) return report(c, setuid(0));
    printf("unknown case %s\n", c);
    return 2;
}
