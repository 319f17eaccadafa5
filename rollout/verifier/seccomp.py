"""A seccomp filter for sandboxed programs: the kernel answers EPERM to system calls a test program has no
business making (debugging other processes, mounting, namespaces, kernel keyrings, BPF, perf, modules,
io_uring, ...), whatever language the program calls them from. Built as classic BPF by hand (no
libseccomp in the image) and installed with PR_SET_SECCOMP right before exec, after no_new_privs.

The syscall numbers come from the kernel's UAPI headers (`asm/unistd_64.h` for x86_64 and
`asm-generic/unistd.h` for aarch64). A call from another ABI (i386 via int 0x80, x32) kills the process:
the numbers below would not mean the same calls there.
"""

from __future__ import annotations

import ctypes
import errno
import platform

from forkrl.rollout.verifier.isolation import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, _check, _libc

CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWUSER, CLONE_NEWPID = 0x02000000, 0x04000000, 0x10000000, 0x20000000
NAMESPACE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWUSER | CLONE_NEWPID
)

# name: (x86_64, aarch64)
DENIED_SYSCALLS: dict[str, tuple[int, int]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "syslog": (103, 116),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "personality": (135, 92),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "adjtimex": (159, 171),
    "clock_adjtime": (305, 266),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "vhangup": (153, 58),
}
CLONE = (56, 220)
"""clone is allowed (fork, threads) unless its flags ask for a namespace."""
CLONE3 = (435, 435)
"""clone3 takes its flags in memory, which a filter cannot read: ENOSYS makes libc fall back to clone."""
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in the tables, AUDIT_ARCH_*
X32_SYSCALL_BIT = 0x40000000

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0_LOW = 0, 4, 16  # struct seccomp_data (little-endian)
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


Instruction = tuple[int, int, int, int]


def supported_arch() -> str | None:
    machine = platform.machine()
    return machine if machine in ARCHES else None


def filter_program(arch: str) -> list[Instruction]:
    """The filter as (code, jt, jf, k) instructions for `arch` ("x86_64" or "aarch64")."""
    column, audit_arch = ARCHES[arch]
    deny = (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM)
    allow = (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)
    program: list[Instruction] = [
        (BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
        (BPF_JEQ_K, 1, 0, audit_arch),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (BPF_LD_W_ABS, 0, 0, OFFSET_NR),
    ]
    if arch == "x86_64":
        program += [(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT), (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS)]
    for numbers in DENIED_SYSCALLS.values():
        program += [(BPF_JEQ_K, 0, 1, numbers[column]), deny]
    program += [(BPF_JEQ_K, 0, 1, CLONE3[column]), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS)]
    program += [
        (BPF_JEQ_K, 0, 3, CLONE[column]),
        (BPF_LD_W_ABS, 0, 0, OFFSET_ARG0_LOW),
        (BPF_JSET_K, 0, 1, NAMESPACE_FLAGS),
        deny,
        allow,
    ]
    return program


def install_filter(arch: str) -> None:
    """Installs the filter on the calling thread and its future children (needs no_new_privs first)."""
    program = filter_program(arch)
    instructions = (SockFilter * len(program))(*[SockFilter(*i) for i in program])
    fprog = SockFprog(len(program), instructions)
    result = _libc().prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                           ctypes.byref(fprog), 0, 0)
    _check(result, "prctl(PR_SET_SECCOMP)")
