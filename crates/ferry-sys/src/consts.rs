//! Kernel ABI constants (from the uapi headers) that libc may not carry.

// linux/ptrace.h
pub const PTRACE_SEIZE: u32 = 0x4206;
pub const PTRACE_INTERRUPT: u32 = 0x4207;
pub const PTRACE_LISTEN: u32 = 0x4208;
pub const PTRACE_PEEKSIGINFO: u32 = 0x4209;
pub const PTRACE_GETSIGMASK: u32 = 0x420a;
pub const PTRACE_SETSIGMASK: u32 = 0x420b;
pub const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
pub const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
pub const PTRACE_O_TRACESYSGOOD: u32 = 1;
pub const PTRACE_O_EXITKILL: u32 = 0x0010_0000;
pub const PTRACE_O_TRACECLONE: u32 = 8;
/// The tracee's seccomp filters (and strict mode) do not apply while this tracer holds it.
pub const PTRACE_O_SUSPEND_SECCOMP: u32 = 1 << 21;
pub const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
pub const PTRACE_SECCOMP_GET_METADATA: u32 = 0x420d;
pub const PTRACE_EVENT_STOP: i32 = 128;
pub const PTRACE_EVENT_CLONE: i32 = 3;
pub const NT_PRSTATUS: u32 = 1;
pub const NT_X86_XSTATE: u32 = 0x202;

// kernel-internal restart codes visible to a tracer in rax (include/linux/errno.h)
pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

// linux/prctl.h
pub const PR_SET_MM: i32 = 35;
pub const PR_SET_MM_MAP: u64 = 14;
pub const PR_GET_TID_ADDRESS: i32 = 40;
pub const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;

// linux/seccomp.h
pub const SECCOMP_SET_MODE_STRICT: u64 = 0;
pub const SECCOMP_SET_MODE_FILTER: u64 = 1;
pub const SECCOMP_FILTER_FLAG_LOG: u64 = 1 << 1;
pub const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
pub const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;

// linux/kcmp.h
pub const KCMP_FILE: i32 = 0;

// linux/rseq.h
pub const RSEQ_FLAG_UNREGISTER: u64 = 1;

// x86_64 syscall numbers used by injection (arch/x86/entry/syscalls/syscall_64.tbl)
pub mod nr {
    pub const READ: u64 = 0;
    pub const CLOSE: u64 = 3;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const RT_SIGACTION: u64 = 13;
    pub const RT_SIGPROCMASK: u64 = 14;
    pub const PREAD64: u64 = 17;
    pub const PREADV: u64 = 295;
    pub const MREMAP: u64 = 25;
    pub const IO_SETUP: u64 = 206;
    pub const IO_SUBMIT: u64 = 209;
    pub const MEMFD_CREATE: u64 = 319;
    pub const MADVISE: u64 = 28;
    pub const GETITIMER: u64 = 36;
    pub const SETITIMER: u64 = 38;
    pub const GETPID: u64 = 39;
    pub const WAIT4: u64 = 61;
    pub const WAITID: u64 = 247;
    pub const SETPGID: u64 = 109;
    pub const SETRESUID: u64 = 117;
    pub const SETRESGID: u64 = 119;
    pub const SETGROUPS: u64 = 116;
    pub const CAPSET: u64 = 126;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const SIGALTSTACK: u64 = 131;
    pub const PERSONALITY: u64 = 135;
    pub const PRCTL: u64 = 157;
    pub const SECCOMP: u64 = 317;
    pub const ARCH_PRCTL: u64 = 158;
    pub const SETFSUID: u64 = 122;
    pub const SETFSGID: u64 = 123;
    pub const SET_TID_ADDRESS: u64 = 218;
    pub const TIMER_CREATE: u64 = 222;
    pub const TIMER_SETTIME: u64 = 223;
    pub const TIMER_GETTIME: u64 = 224;
    pub const TIMER_GETOVERRUN: u64 = 225;
    pub const MLOCK: u64 = 149;
    pub const MLOCK2: u64 = 325;
    pub const MSEAL: u64 = 462;
    pub const SET_ROBUST_LIST: u64 = 273;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const RSEQ: u64 = 334;
    pub const MEMBARRIER: u64 = 324;
    pub const RT_SIGTIMEDWAIT: u64 = 128;
    pub const FCNTL: u64 = 72;
    pub const FLOCK: u64 = 73;
    pub const PRLIMIT64: u64 = 302;
    pub const CLOSE_RANGE: u64 = 436;
    pub const CLONE3: u64 = 435;
    pub const CLONE: u64 = 56;
    pub const DUP3: u64 = 292;
    pub const PIDFD_OPEN: u64 = 434;
}

/// `SO_BUF_LOCK` (asm-generic/socket.h, Linux 5.14): which buffer sizes the program set
/// itself (SOCK_SNDBUF_LOCK 1, SOCK_RCVBUF_LOCK 2); not in libc yet.
pub const SO_BUF_LOCK: i32 = 72;

// linux/fs.h
/// struct pm_scan_arg of PAGEMAP_SCAN (process.rs `pagemap_scan`, uffd.rs).
#[repr(C)]
#[derive(Default)]
pub(crate) struct PmScanArg {
    pub(crate) size: u64,
    pub(crate) flags: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) walk_end: u64,
    pub(crate) vec: u64,
    pub(crate) vec_len: u64,
    pub(crate) max_pages: u64,
    pub(crate) category_inverted: u64,
    pub(crate) category_mask: u64,
    pub(crate) category_anyof_mask: u64,
    pub(crate) return_mask: u64,
}
