//! The three syscall ABIs of an x86_64 kernel and how a call through one of them maps to the
//! x86_64 call it is: a policy names calls once (x86_64 names) and holds for the same call
//! through `int 0x80` (i386) and x32.
//!
//! A compat call is the x86_64 call of the same name, or of the name its older or 32-bit form
//! stands for (`mmap2` → `mmap`, `chown32` → `chown`, `stat64` → `stat`, `sigaction` →
//! `rt_sigaction`, `clock_gettime64` → `clock_gettime`, ...). i386's `socketcall` and `ipc`
//! multiplex many calls through their first argument ([`Native::SocketCall`], [`Native::Ipc`]:
//! the kernel side decodes them). What has no x86_64 counterpart (`vm86`, `idle`, ...) is
//! [`Native::None`].
use crate::{i386, x32, x86_64};

/// A syscall ABI of x86_64 Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Abi {
    X86_64,
    /// x86 32-bit: `int 0x80`, `sysenter`, and `syscall` from 32-bit code.
    I386,
    /// x32: the x86_64 instruction with `__X32_SYSCALL_BIT` in the number.
    X32,
}

/// The bit x32 calls carry in their number.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

impl Abi {
    pub const ALL: [Abi; 3] = [Abi::X86_64, Abi::I386, Abi::X32];

    /// The name policies and events use.
    pub fn as_str(self) -> &'static str {
        match self {
            Abi::X86_64 => "x86_64",
            Abi::I386 => "i386",
            Abi::X32 => "x32",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Abi::X86_64 => x86_64::NAMES,
            Abi::I386 => i386::NAMES,
            Abi::X32 => x32::NAMES,
        }
    }

    /// Numbers this table covers (0 up to this).
    pub fn table_len(self) -> u32 {
        self.names().len() as u32
    }
}

/// The name of syscall `nr` of `abi` (x32 numbers without the x32 bit).
pub fn name_in(abi: Abi, nr: u32) -> Option<&'static str> {
    abi.names()
        .get(nr as usize)
        .copied()
        .filter(|n| !n.is_empty())
}

/// The number of syscall `name` in `abi`.
pub fn number_in(abi: Abi, name: &str) -> Option<u32> {
    abi.names()
        .iter()
        .position(|n| !n.is_empty() && *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// What a compat call is in x86_64 terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    /// The x86_64 call with this number.
    Nr(u32),
    /// i386 `socketcall(call, args)`: the socket call numbered by its first argument.
    SocketCall,
    /// i386 `ipc(call, ...)`: the System V IPC call numbered by its first argument.
    Ipc,
    /// No x86_64 counterpart.
    None,
}

/// Older and 32-bit forms of calls, by the x86_64 name they stand for.
const ALIASES: &[(&str, &str)] = &[
    ("_llseek", "lseek"),
    ("_newselect", "select"),
    ("chown32", "chown"),
    ("fchown32", "fchown"),
    ("lchown32", "lchown"),
    ("getuid32", "getuid"),
    ("getgid32", "getgid"),
    ("geteuid32", "geteuid"),
    ("getegid32", "getegid"),
    ("getgroups32", "getgroups"),
    ("getresuid32", "getresuid"),
    ("getresgid32", "getresgid"),
    ("setuid32", "setuid"),
    ("setgid32", "setgid"),
    ("setreuid32", "setreuid"),
    ("setregid32", "setregid"),
    ("setresuid32", "setresuid"),
    ("setresgid32", "setresgid"),
    ("setgroups32", "setgroups"),
    ("setfsuid32", "setfsuid"),
    ("setfsgid32", "setfsgid"),
    ("clock_adjtime64", "clock_adjtime"),
    ("clock_getres_time64", "clock_getres"),
    ("clock_gettime64", "clock_gettime"),
    ("clock_nanosleep_time64", "clock_nanosleep"),
    ("clock_settime64", "clock_settime"),
    ("futex_time64", "futex"),
    ("io_pgetevents_time64", "io_pgetevents"),
    ("mq_timedreceive_time64", "mq_timedreceive"),
    ("mq_timedsend_time64", "mq_timedsend"),
    ("ppoll_time64", "ppoll"),
    ("pselect6_time64", "pselect6"),
    ("recvmmsg_time64", "recvmmsg"),
    ("rt_sigtimedwait_time64", "rt_sigtimedwait"),
    ("sched_rr_get_interval_time64", "sched_rr_get_interval"),
    ("semtimedop_time64", "semtimedop"),
    ("timer_gettime64", "timer_gettime"),
    ("timer_settime64", "timer_settime"),
    ("timerfd_gettime64", "timerfd_gettime"),
    ("timerfd_settime64", "timerfd_settime"),
    ("utimensat_time64", "utimensat"),
    ("fadvise64_64", "fadvise64"),
    ("fcntl64", "fcntl"),
    ("stat64", "stat"),
    ("lstat64", "lstat"),
    ("fstat64", "fstat"),
    ("fstatat64", "newfstatat"),
    ("oldstat", "stat"),
    ("oldlstat", "lstat"),
    ("oldfstat", "fstat"),
    ("statfs64", "statfs"),
    ("fstatfs64", "fstatfs"),
    ("truncate64", "truncate"),
    ("ftruncate64", "ftruncate"),
    ("mmap2", "mmap"),
    ("sendfile64", "sendfile"),
    ("ugetrlimit", "getrlimit"),
    ("umount", "umount2"),
    ("readdir", "getdents"),
    ("sigaction", "rt_sigaction"),
    ("signal", "rt_sigaction"),
    ("sigpending", "rt_sigpending"),
    ("sigprocmask", "rt_sigprocmask"),
    ("sgetmask", "rt_sigprocmask"),
    ("ssetmask", "rt_sigprocmask"),
    ("sigreturn", "rt_sigreturn"),
    ("sigsuspend", "rt_sigsuspend"),
    ("waitpid", "wait4"),
    ("nice", "setpriority"),
    ("stime", "settimeofday"),
    ("olduname", "uname"),
    ("oldolduname", "uname"),
];

/// The x86_64 call that call `nr` of `abi` makes.
pub fn native(abi: Abi, nr: u32) -> Native {
    let Some(name) = name_in(abi, nr) else {
        return Native::None;
    };
    if abi == Abi::X86_64 {
        return Native::Nr(nr);
    }
    match name {
        "socketcall" if abi == Abi::I386 => return Native::SocketCall,
        "ipc" if abi == Abi::I386 => return Native::Ipc,
        _ => {}
    }
    let target = ALIASES
        .iter()
        .find(|(from, _)| *from == name)
        .map_or(name, |(_, to)| to);
    number_in(Abi::X86_64, target).map_or(Native::None, Native::Nr)
}

/// The x86_64 calls `socketcall`'s first argument (1 ..= 20) selects, by that argument.
pub const SOCKETCALLS: [&str; 20] = [
    "socket",
    "bind",
    "connect",
    "listen",
    "accept",
    "getsockname",
    "getpeername",
    "socketpair",
    "sendto",   // SYS_SEND
    "recvfrom", // SYS_RECV
    "sendto",
    "recvfrom",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "sendmsg",
    "recvmsg",
    "accept4",
    "recvmmsg",
    "sendmmsg",
];

/// The x86_64 calls `ipc`'s first argument selects: (argument, call).
pub const IPC_CALLS: [(u32, &str); 12] = [
    (1, "semop"),
    (2, "semget"),
    (3, "semctl"),
    (4, "semtimedop"),
    (11, "msgsnd"),
    (12, "msgrcv"),
    (13, "msgget"),
    (14, "msgctl"),
    (21, "shmat"),
    (22, "shmdt"),
    (23, "shmget"),
    (24, "shmctl"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_abi() {
        assert_eq!(name_in(Abi::I386, 96), Some("getpriority"));
        assert_eq!(name_in(Abi::I386, 20), Some("getpid"));
        assert_eq!(name_in(Abi::I386, 11), Some("execve"));
        assert_eq!(name_in(Abi::I386, 102), Some("socketcall"));
        assert_eq!(name_in(Abi::I386, 425), Some("io_uring_setup"));
        assert_eq!(name_in(Abi::I386, 469), Some("file_setattr"));
        assert_eq!(name_in(Abi::X32, 39), Some("getpid"));
        assert_eq!(name_in(Abi::X32, 13), None, "rt_sigaction is 512 on x32");
        assert_eq!(name_in(Abi::X32, 512), Some("rt_sigaction"));
        assert_eq!(name_in(Abi::X32, 547), Some("pwritev2"));
        assert_eq!(name_in(Abi::X86_64, 140), Some("getpriority"));
        assert_eq!(number_in(Abi::I386, "getpriority"), Some(96));
        assert_eq!(Abi::parse("i386"), Some(Abi::I386));
        assert_eq!(Abi::parse("x86"), None);
    }

    #[test]
    fn compat_calls_map_to_the_x86_64_call() {
        let nr = |n| number_in(Abi::X86_64, n).unwrap();
        assert_eq!(native(Abi::I386, 96), Native::Nr(nr("getpriority")));
        assert_eq!(native(Abi::I386, 20), Native::Nr(39));
        assert_eq!(native(Abi::I386, 11), Native::Nr(59), "execve");
        let i = |n| number_in(Abi::I386, n).unwrap();
        assert_eq!(native(Abi::I386, i("mmap2")), Native::Nr(nr("mmap")));
        assert_eq!(native(Abi::I386, i("chown32")), Native::Nr(nr("chown")));
        assert_eq!(native(Abi::I386, i("stat64")), Native::Nr(nr("stat")));
        assert_eq!(
            native(Abi::I386, i("fstatat64")),
            Native::Nr(nr("newfstatat"))
        );
        assert_eq!(
            native(Abi::I386, i("sigaction")),
            Native::Nr(nr("rt_sigaction"))
        );
        assert_eq!(
            native(Abi::I386, i("clock_gettime64")),
            Native::Nr(nr("clock_gettime"))
        );
        assert_eq!(native(Abi::I386, 102), Native::SocketCall);
        assert_eq!(native(Abi::I386, i("ipc")), Native::Ipc);
        assert_eq!(native(Abi::I386, i("vm86")), Native::None);
        assert_eq!(native(Abi::I386, 9999), Native::None);
        // x32: the same number below 512, by name above
        assert_eq!(native(Abi::X32, 39), Native::Nr(39));
        assert_eq!(native(Abi::X32, 512), Native::Nr(nr("rt_sigaction")));
        assert_eq!(native(Abi::X32, 520), Native::Nr(nr("execve")));
        assert_eq!(native(Abi::X32, 13), Native::None);
    }

    #[test]
    fn every_compat_name_maps_or_is_known_to_have_no_counterpart() {
        // the i386-only calls Linux does not implement on x86_64 kernels, or that have no
        // x86_64 form
        const NONE: &[&str] = &[
            "bdflush", "break", "ftime", "gtty", "idle", "lock", "mpx", "prof", "profil", "stty",
            "ulimit", "vm86", "vm86old",
        ];
        for abi in [Abi::I386, Abi::X32] {
            for nr in 0..abi.table_len() {
                let Some(name) = name_in(abi, nr) else {
                    continue;
                };
                match native(abi, nr) {
                    Native::None => assert!(NONE.contains(&name), "{abi:?} {name} unmapped"),
                    Native::Nr(n) => assert!(crate::name(n).is_some(), "{name} → {n}"),
                    Native::SocketCall | Native::Ipc => {}
                }
            }
        }
        for (from, to) in ALIASES {
            assert!(number_in(Abi::I386, from).is_some(), "{from}");
            assert!(number_in(Abi::X86_64, to).is_some(), "{to}");
        }
        for n in SOCKETCALLS.iter().chain(IPC_CALLS.iter().map(|(_, n)| n)) {
            assert!(number_in(Abi::X86_64, n).is_some(), "{n}");
        }
    }

    #[test]
    fn names_are_unique_per_abi() {
        for abi in Abi::ALL {
            let mut seen = std::collections::HashSet::new();
            for nr in 0..abi.table_len() {
                if let Some(n) = name_in(abi, nr) {
                    assert!(seen.insert(n), "{abi:?}: duplicate {n}");
                }
            }
        }
    }
}
