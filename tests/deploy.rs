//! The deployment files in deploy/: the container images, the Kubernetes and Compose
//! manifests and the seccomp profile.
//!
//! Docker and Kubernetes are not available where these tests run, so the files are
//! checked in two ways:
//! - structurally: the seccomp profile is parsed (a small JSON reader below; the root
//!   crate has no JSON dependency) and its decisions evaluated; the YAML files are parsed
//!   with PyYAML when python3 has it, and always with a line-based reader whose findings
//!   must agree; every LD_PRELOAD, seccomp path and install location must agree with the
//!   Dockerfile; every RINGSHIM_* value must pass `ringshim doctor`;
//! - by behaviour: `tests/progs/dp_seccomp.c` loads the profile with libseccomp (as runc
//!   and crun do) and execs a command under it, so `ringshim doctor`, redis-server and
//!   nginx (through `ringshim run`, as the images start them) run here under the very
//!   filter a container would get — once with the profile, once with the profile minus
//!   io_uring (what Docker's default does to the shim).
//!
//! Not covered: building the images, a real Docker/containerd/Kubernetes run, and the
//! capability set a runtime grants (the filter is applied to a process with this test's
//! own privileges).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// A small JSON reader (RFC 8259; rejects duplicate keys, which Go's decoders would
// silently resolve to the last one).

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    /// The number's text, as written.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }
    fn obj(&self) -> &[(String, Json)] {
        match self {
            Json::Obj(kv) => kv,
            _ => &[],
        }
    }
    fn u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }
    fn bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// Follows a path of object keys.
    fn at(&self, path: &[&str]) -> Option<&Json> {
        path.iter().try_fold(self, |j, k| j.get(k))
    }
    /// A scalar as text (YAML turns unquoted numbers and booleans into non-strings).
    fn scalar_text(&self) -> Option<String> {
        match self {
            Json::Str(s) => Some(s.clone()),
            Json::Num(n) => Some(n.clone()),
            Json::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let mut p = JsonParser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(v)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn err(&self, what: &str) -> String {
        let line = self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|&&c| c == b'\n')
            .count()
            + 1;
        format!("JSON error at line {line}: {what}")
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }
    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return Err(self.err("nested too deeply"));
        }
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut kv: Vec<(String, Json)> = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    if kv.iter().any(|(have, _)| *have == k) {
                        return Err(self.err(&format!("duplicate key {k:?}")));
                    }
                    self.eat(b':')?;
                    let v = self.value(depth + 1)?;
                    kv.push((k, v));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(kv));
                        }
                        _ => return Err(self.err("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a value")),
        }
    }
    fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(self.err("bad literal"))
        }
    }
    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let s = p.i;
            while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                p.i += 1;
            }
            p.i - s
        };
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        let int_start = self.i;
        let n = digits(self);
        if n == 0 || (n > 1 && self.s[int_start] == b'0') {
            return Err(self.err("bad number"));
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(self.err("bad fraction"));
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("bad exponent"));
            }
        }
        Ok(Json::Num(
            String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
        ))
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(h)
    }
    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or_else(|| self.err("open string"))?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or_else(|| self.err("open escape"))?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xd800..0xdc00).contains(&cp)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo.wrapping_sub(0xdc00));
                            }
                            char::from_u32(cp).ok_or_else(|| self.err("bad code point"))?
                        }
                        _ => return Err(self.err("bad escape")),
                    };
                    let mut b = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                }
                0..=0x1f => return Err(self.err("control character in string")),
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("invalid UTF-8"))
    }
}

#[test]
fn json_reader_accepts_json_and_rejects_the_rest() {
    let v = parse_json(r#" {"a": [1, -2.5e3, true, null, "x\"\u00e9\ud83d\ude00"], "b": {}} "#)
        .unwrap();
    assert_eq!(v.get("a").unwrap().arr()[0].u64(), Some(1));
    assert_eq!(
        v.get("a").unwrap().arr()[4].str(),
        Some("x\"\u{e9}\u{1f600}")
    );
    for bad in [
        "{\"a\": 1,}",
        "[1 2]",
        "{\"a\": 1, \"a\": 2}",
        "01",
        "{'a': 1}",
        "[1] x",
        "\"tab\there\"",
        "// c\n{}",
    ] {
        assert!(parse_json(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Paths, the programs under test.

fn deploy() -> PathBuf {
    common::repo_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `ringshim` CLI: `$RINGSHIM_CLI`, or a debug build of crates/cli.
fn cli() -> PathBuf {
    static CLI: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CLI.get_or_init(|| {
        if let Ok(p) = std::env::var("RINGSHIM_CLI") {
            return PathBuf::from(p);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ringshim-cli"])
            .current_dir(common::repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p ringshim-cli failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| common::repo_root().join("target"));
        let exe = target.join("debug").join("ringshim");
        assert!(exe.exists(), "{} missing", exe.display());
        exe
    })
    .clone()
}

/// A command with no RINGSHIM_* variable inherited from the test's environment.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RINGSHIM") || k == "LD_PRELOAD" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A scratch directory under target/tmp, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = common::repo_root()
            .join("target")
            .join("tmp")
            .join(format!("deploy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// The seccomp profile.

const PROFILE: &str = "seccomp/ringshim.json";
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Allow,
    Errno(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

#[derive(Debug, Clone)]
struct Cond {
    index: usize,
    op: Op,
    value: u64,
    value_two: u64,
}

impl Cond {
    fn holds(&self, args: &[u64; 6]) -> bool {
        let a = args[self.index];
        match self.op {
            Op::Ne => a != self.value,
            Op::Lt => a < self.value,
            Op::Le => a <= self.value,
            Op::Eq => a == self.value,
            Op::Ge => a >= self.value,
            Op::Gt => a > self.value,
            Op::MaskedEq => a & self.value == self.value_two,
        }
    }
    /// INDEX:OP:VALUE:VALUETWO for dp_seccomp.
    fn rule_text(&self) -> String {
        let op = match self.op {
            Op::Ne => "NE",
            Op::Lt => "LT",
            Op::Le => "LE",
            Op::Eq => "EQ",
            Op::Ge => "GE",
            Op::Gt => "GT",
            Op::MaskedEq => "MASKED_EQ",
        };
        format!("{}:{op}:{}:{}", self.index, self.value, self.value_two)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    names: Vec<String>,
    action: Action,
    conds: Vec<Cond>,
}

#[derive(Debug)]
struct Profile {
    default: Action,
    rules: Vec<Rule>,
}

fn parse_action(rule: &Json, action_key: &str, errno_key: &str) -> Result<Action, String> {
    match rule.get(action_key).and_then(Json::str) {
        Some("SCMP_ACT_ALLOW") => Ok(Action::Allow),
        Some("SCMP_ACT_ERRNO") => {
            let e = match rule.get(errno_key) {
                None => EPERM, // runc's default errno for SCMP_ACT_ERRNO
                Some(v) => v.u64().ok_or(format!("{errno_key} is not a number"))? as u32,
            };
            Ok(Action::Errno(e))
        }
        other => Err(format!(
            "{action_key} {other:?}: only SCMP_ACT_ALLOW and SCMP_ACT_ERRNO are expected"
        )),
    }
}

/// Reads the profile, insisting on what every runtime reads the same way: Docker
/// (moby's format), containerd (the OCI runtime-spec format, which ignores the keys it
/// does not know) and CRI-O. Keys only Docker understands ("includes", "excludes",
/// "archMap") would be dropped silently by containerd, widening the filter there.
fn load_profile(text: &str) -> Result<Profile, String> {
    let top = parse_json(text)?;
    for (k, _) in top.obj() {
        if ![
            "defaultAction",
            "defaultErrnoRet",
            "architectures",
            "syscalls",
        ]
        .contains(&k.as_str())
        {
            return Err(format!(
                "top-level key {k:?} is not portable across runtimes"
            ));
        }
    }
    let default = parse_action(&top, "defaultAction", "defaultErrnoRet")?;
    let mut rules = Vec::new();
    for (i, r) in top
        .get("syscalls")
        .ok_or("no syscalls")?
        .arr()
        .iter()
        .enumerate()
    {
        for (k, _) in r.obj() {
            if !["names", "action", "errnoRet", "args", "comment"].contains(&k.as_str()) {
                return Err(format!(
                    "rule {i}: key {k:?} is not portable across runtimes"
                ));
            }
        }
        let names: Vec<String> = r
            .get("names")
            .ok_or(format!("rule {i}: no names"))?
            .arr()
            .iter()
            .map(|n| {
                n.str()
                    .map(str::to_string)
                    .ok_or(format!("rule {i}: bad name"))
            })
            .collect::<Result<_, _>>()?;
        if names.is_empty() {
            return Err(format!("rule {i}: empty names"));
        }
        let action = parse_action(r, "action", "errnoRet").map_err(|e| format!("rule {i}: {e}"))?;
        let mut conds = Vec::new();
        for a in r.get("args").map(Json::arr).unwrap_or(&[]) {
            let index = a
                .get("index")
                .and_then(Json::u64)
                .ok_or("arg without index")? as usize;
            if index > 5 {
                return Err(format!("rule {i}: argument index {index}"));
            }
            let op = match a.get("op").and_then(Json::str) {
                Some("SCMP_CMP_NE") => Op::Ne,
                Some("SCMP_CMP_LT") => Op::Lt,
                Some("SCMP_CMP_LE") => Op::Le,
                Some("SCMP_CMP_EQ") => Op::Eq,
                Some("SCMP_CMP_GE") => Op::Ge,
                Some("SCMP_CMP_GT") => Op::Gt,
                Some("SCMP_CMP_MASKED_EQ") => Op::MaskedEq,
                other => return Err(format!("rule {i}: op {other:?}")),
            };
            let value = a
                .get("value")
                .and_then(Json::u64)
                .ok_or("arg without value")?;
            let value_two = a
                .get("valueTwo")
                .map_or(Some(0), Json::u64)
                .ok_or("bad valueTwo")?;
            conds.push(Cond {
                index,
                op,
                value,
                value_two,
            });
        }
        rules.push(Rule {
            names,
            action,
            conds,
        });
    }
    Ok(Profile { default, rules })
}

impl Profile {
    /// What the filter does with this call: the most restrictive action among the
    /// matching rules (libseccomp's precedence: ERRNO before ALLOW), else the default.
    fn decide(&self, name: &str, args: [u64; 6]) -> Action {
        let mut found: Option<Action> = None;
        for r in &self.rules {
            if r.names.iter().any(|n| n == name) && r.conds.iter().all(|c| c.holds(&args)) {
                found = match (found, r.action) {
                    (Some(Action::Errno(e)), _) => Some(Action::Errno(e)),
                    (_, a) => Some(a),
                };
            }
        }
        found.unwrap_or(self.default)
    }

    fn allows(&self, name: &str) -> bool {
        self.decide(name, [0; 6]) == Action::Allow
    }

    /// The profile as dp_seccomp rules, leaving out the rules for `drop`.
    fn rules_text(&self, drop: &[&str]) -> String {
        let act = |a: Action| match a {
            Action::Allow => "allow".to_string(),
            Action::Errno(e) => format!("errno {e}"),
        };
        let mut out = format!("default {}\n", act(self.default));
        for r in &self.rules {
            for n in r.names.iter().filter(|n| !drop.contains(&n.as_str())) {
                let conds: Vec<String> = r.conds.iter().map(Cond::rule_text).collect();
                out.push_str(&format!("{} {n} {}\n", act(r.action), conds.join(" ")));
            }
        }
        out
    }
}

fn profile() -> Profile {
    load_profile(&read(&deploy().join(PROFILE))).unwrap_or_else(|e| panic!("{PROFILE}: {e}"))
}

const IO_URING: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// The names of a list below ('#' starts a comment line).
fn words(list: &str) -> Vec<&str> {
    list.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .collect()
}

/// What the shim, the CLI and the servers it is meant for (nginx, redis-server, with
/// glibc) call: the names an strace of redis-server (with BGSAVE) and nginx (master and
/// workers) under the shim showed, and the families the shim's code uses. `socket` and
/// `clone` are checked with their arguments below.
const NEEDED: &str = "
    # io_uring and the shim's own descriptors
    io_uring_setup io_uring_enter io_uring_register eventfd2 close close_range
    # sockets
    bind listen accept accept4 connect getsockname getpeername getsockopt setsockopt
    shutdown socketpair sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg
    # readiness
    epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 poll ppoll
    select pselect6
    # data
    read write readv writev pread64 pwrite64 sendfile splice lseek fcntl ioctl dup dup2
    dup3 pipe2 fsync fdatasync ftruncate
    # memory
    brk mmap munmap mprotect mremap madvise memfd_create membarrier
    # threads, processes, signals
    futex set_robust_list set_tid_address rseq gettid getpid getppid execve exit
    exit_group wait4 kill tgkill prctl arch_prctl rt_sigaction rt_sigprocmask
    rt_sigreturn rt_sigsuspend sigaltstack getrlimit setrlimit prlimit64
    sched_getaffinity sched_yield
    # files (stats pages in /dev/shm, logs, configuration)
    openat access newfstatat fstat statx unlinkat unlink rename mkdir chown umask getcwd
    readlink
    # credentials (nginx's master drops privileges), time, information
    getuid geteuid getgid getegid setuid setgid setgroups clock_gettime clock_nanosleep
    nanosleep setitimer uname sysinfo getrandom
";

/// Refused by Docker's default profile (for a container with Docker's default
/// capabilities), and so by this one.
const DENIED: &str = "
    &str] = &[ mount umount2 unshare setns pivot_root bpf perf_event_open keyctl add_key
    request_key kexec_load kexec_file_load reboot init_module finit_module delete_module
    userfaultfd open_by_handle_at clock_settime settimeofday swapon swapoff acct
    quotactl syslog iopl ioperm fanotify_init kcmp pidfd_getfd process_madvise mbind
    set_mempolicy move_pages lookup_dcookie vhangup fsopen fsmount move_mount open_tree
";

/// Names in the profile that the kernel headers installed here do not define: calls of
/// other architectures and calls newer than these headers. Anything else the headers
/// lack is a typo, which a runtime would skip silently (leaving the call denied).
const NOT_IN_LOCAL_HEADERS: &str = "
    &str] = &[ arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls
    swapcontext sync_file_range2 s390_pci_mmio_read s390_pci_mmio_write
    s390_runtime_instr riscv_flush_icache riscv_hwprobe recv send cachestat fchmodat2
    futex_requeue futex_wait futex_wake getxattrat setxattrat listxattrat removexattrat
    listmount statmount map_shadow_stack mseal uretprobe
";

#[test]
fn seccomp_profile_is_docker_default_plus_io_uring() {
    let p = profile();
    assert_eq!(
        p.default,
        Action::Errno(EPERM),
        "Docker's semantics: whatever is not allowed fails with EPERM"
    );
    for name in IO_URING {
        assert!(
            p.rules.iter().any(|r| r.action == Action::Allow
                && r.conds.is_empty()
                && r.names.iter().any(|n| n == name)),
            "{name} must be allowed unconditionally"
        );
    }
    let missing: Vec<&str> = words(NEEDED).into_iter().filter(|n| !p.allows(n)).collect();
    assert!(missing.is_empty(), "needed but not allowed: {missing:?}");
    let open: Vec<&str> = words(DENIED).into_iter().filter(|n| p.allows(n)).collect();
    assert!(
        open.is_empty(),
        "Docker's default refuses these, the profile allows them: {open:?}"
    );

    // socket(): the families servers use, not the ones Docker refuses (AF_VSOCK, AF_ALG...).
    for (family, name) in [
        (1, "AF_UNIX"),
        (2, "AF_INET"),
        (10, "AF_INET6"),
        (16, "AF_NETLINK"),
    ] {
        assert_eq!(
            p.decide("socket", [family, 1, 0, 0, 0, 0]),
            Action::Allow,
            "{name}"
        );
    }
    for (family, name) in [(40, "AF_VSOCK"), (38, "AF_ALG"), (46, "beyond AF_MCTP")] {
        assert_eq!(
            p.decide("socket", [family, 1, 0, 0, 0, 0]),
            Action::Errno(EPERM),
            "{name}"
        );
    }
    // clone(): threads and fork, never new namespaces; clone3 falls back to clone.
    let thread = 0x3d0f00; // glibc pthread_create: VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
    let fork = 0x1200011; // glibc fork: CHILD_SETTID|CHILD_CLEARTID|SIGCHLD
    assert_eq!(p.decide("clone", [thread, 0, 0, 0, 0, 0]), Action::Allow);
    assert_eq!(p.decide("clone", [fork, 0, 0, 0, 0, 0]), Action::Allow);
    for ns in [0x20000, 0x10000000, 0x40000000, 0x20000000] {
        assert_eq!(
            p.decide("clone", [fork | ns, 0, 0, 0, 0, 0]),
            Action::Errno(EPERM),
            "{ns:#x}"
        );
    }
    assert_eq!(p.decide("clone3", [0; 6]), Action::Errno(ENOSYS));
    assert_eq!(p.decide("personality", [0; 6]), Action::Allow);
    assert_eq!(
        p.decide("personality", [0x0400000, 0, 0, 0, 0, 0]),
        Action::Errno(EPERM)
    );

    // One unconditional rule per name: a name listed twice is a sign of a merge gone wrong.
    let mut seen = BTreeMap::new();
    for r in p.rules.iter().filter(|r| r.conds.is_empty()) {
        for n in &r.names {
            assert!(seen.insert(n.clone(), ()).is_none(), "{n} listed twice");
        }
    }
}

#[test]
fn seccomp_profile_names_are_system_calls() {
    let include = Path::new("/usr/include");
    let mut headers: Vec<PathBuf> = vec![include.join("asm-generic/unistd.h")];
    for dir in std::fs::read_dir(include).into_iter().flatten().flatten() {
        let asm = dir.path().join("asm");
        for f in std::fs::read_dir(&asm).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("unistd") && name.ends_with(".h") {
                headers.push(f.path());
            }
        }
    }
    let mut known = std::collections::BTreeSet::new();
    for h in headers.iter().filter(|h| h.exists()) {
        for line in read(h).lines() {
            let mut w = line.split_whitespace();
            if let (Some("#define"), Some(macro_name)) = (w.next(), w.next()) {
                for prefix in ["__NR3264_", "__NR_"] {
                    if let Some(n) = macro_name.strip_prefix(prefix) {
                        known.insert(n.to_string());
                    }
                }
            }
        }
    }
    if !common::require(known.len() > 300, "kernel headers (linux-libc-dev)") {
        return;
    }
    let p = profile();
    let elsewhere = words(NOT_IN_LOCAL_HEADERS);
    let mut unknown: Vec<&str> = p
        .rules
        .iter()
        .flat_map(|r| r.names.iter())
        .map(String::as_str)
        .filter(|n| !known.contains(*n) && !elsewhere.contains(n))
        .collect();
    unknown.dedup();
    assert!(unknown.is_empty(), "not system calls (typos?): {unknown:?}");
    let typos: Vec<&str> = words(NEEDED)
        .into_iter()
        .chain(words(DENIED))
        .filter(|n| !known.contains(*n) && !elsewhere.contains(n))
        .collect();
    assert!(typos.is_empty(), "this test's own lists: {typos:?}");
}

// ---------------------------------------------------------------------------------------
// Dockerfiles.

#[derive(Debug)]
struct Instr {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &str> {
        let keyword = keyword.to_string();
        self.instrs
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }
    fn last(&self, keyword: &str) -> Option<&str> {
        self.all(keyword).last()
    }
    /// (sources, destination, --from) of every COPY.
    fn copies(&self) -> Vec<(Vec<String>, String, Option<String>)> {
        self.all("COPY")
            .map(|a| {
                let mut from = None;
                let mut paths = Vec::new();
                for w in a.split_whitespace() {
                    if let Some(f) = w.strip_prefix("--from=") {
                        from = Some(f.to_string());
                    } else if !w.starts_with("--") {
                        paths.push(w.to_string());
                    }
                }
                let dest = paths.pop().unwrap_or_default();
                (paths, dest, from)
            })
            .collect()
    }
    /// ENV KEY=VALUE pairs (the form these files use).
    fn env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for a in self.all("ENV") {
            for w in a.split_whitespace() {
                let (k, v) = w
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV {a}: use KEY=VALUE"));
                out.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        out
    }
}

/// Dockerfile instructions, stage by stage: continuation lines joined, comments dropped,
/// `ARG` defaults declared before the first FROM substituted into FROM lines.
fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    assert!(cur.is_empty(), "Dockerfile ends inside a continuation");
    let mut globals: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical.iter().filter(|l| !l.trim().is_empty()) {
        let (kw, args) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
        let kw = kw.to_ascii_uppercase();
        let args = args.trim().to_string();
        if kw == "FROM" {
            let mut words = args.split_whitespace().filter(|w| !w.starts_with("--"));
            let mut base = words.next().unwrap_or_default().to_string();
            for (k, v) in &globals {
                base = base
                    .replace(&format!("${{{k}}}"), v)
                    .replace(&format!("${k}"), v);
            }
            let name = match (words.next(), words.next()) {
                (Some(as_), Some(n)) if as_.eq_ignore_ascii_case("as") => Some(n.to_string()),
                _ => None,
            };
            stages.push(Stage {
                base,
                name,
                instrs: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instrs.push(Instr { keyword: kw, args });
        } else {
            assert_eq!(kw, "ARG", "only ARG may come before the first FROM: {l}");
            let (k, v) = args.split_once('=').unwrap_or((&args, ""));
            globals.insert(k.to_string(), v.to_string());
        }
    }
    stages
}

/// An exec-form ENTRYPOINT/CMD as its words.
fn exec_form(args: &str) -> Vec<String> {
    parse_json(args)
        .unwrap_or_else(|e| panic!("{args}: not exec form (JSON array): {e}"))
        .arr()
        .iter()
        .map(|w| w.str().expect("string").to_string())
        .collect()
}

/// Where deploy/Dockerfile puts the library and the CLI in the final image.
fn image_paths() -> (String, String) {
    let stages = parse_dockerfile(&read(&deploy().join("Dockerfile")));
    let runtime = stages.last().expect("a stage");
    let mut lib = None;
    let mut cli = None;
    for (srcs, dest, from) in runtime.copies() {
        if from.is_some() && srcs.iter().any(|s| s.ends_with("/libringshim.so")) {
            lib = Some(dest);
        } else if from.is_some() && srcs.iter().any(|s| s.ends_with("/ringshim")) {
            cli = Some(dest);
        }
    }
    (
        lib.expect("runtime stage copies libringshim.so"),
        cli.expect("runtime stage copies the ringshim CLI"),
    )
}

const LIBRARY: &str = "/usr/lib/ringshim/libringshim.so";

#[test]
fn dockerfile_builds_the_workspace_and_installs_where_ld_preload_points() {
    let stages = parse_dockerfile(&read(&deploy().join("Dockerfile")));
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    let (build, runtime) = (&stages[0], &stages[1]);
    assert_eq!(build.base, "rust:1-bookworm");
    assert_eq!(runtime.base, "debian:bookworm-slim");
    let name = build.name.as_deref().expect("named builder stage");
    assert!(
        build
            .all("RUN")
            .any(|r| r.contains("cargo build --release --workspace")),
        "builder runs cargo build --release --workspace"
    );
    for artifact in ["target/release/libringshim.so", "target/release/ringshim"] {
        assert!(
            build.all("RUN").any(|r| r.contains(artifact)),
            "builder takes {artifact} out of the cached target/"
        );
    }
    for (_, _, from) in runtime.copies() {
        assert!(from.is_none() || from.as_deref() == Some(name), "{from:?}");
    }
    // No ENTRYPOINT: the init containers' `command: ["ringshim-install", DIR]` (Compose
    // and Kubernetes alike) must run that program, not `ENTRYPOINT ringshim-install DIR`.
    assert_eq!(runtime.last("ENTRYPOINT"), None);
    assert_eq!(
        exec_form(runtime.last("CMD").unwrap()),
        ["ringshim", "doctor"]
    );
    let (lib, cli_path) = image_paths();
    assert_eq!(lib, LIBRARY);
    assert_eq!(cli_path, "/usr/local/bin/ringshim");
    // The install script the init containers run is in the image, on PATH.
    assert!(runtime
        .copies()
        .iter()
        .any(|(s, d, _)| s == &["deploy/ringshim-install.sh"]
            && d == "/usr/local/bin/ringshim-install"));
    // Everything copied from the build context exists (the context is the repository).
    for (srcs, _, from) in runtime.copies() {
        if from.is_none() {
            for s in srcs {
                assert!(
                    common::repo_root().join(&s).exists(),
                    "COPY {s}: no such file"
                );
            }
        }
    }
    // The build context must not drag target/ and .git along.
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    for pat in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pat),
            "Dockerfile.dockerignore: {pat}"
        );
    }

    // `ringshim run` in that image finds the library without RINGSHIM_LIBRARY: the
    // library's directory is one of the CLI's default search places.
    let help = Command::new(cli()).arg("help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let dir = Path::new(&lib)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        help.contains(&format!("{dir}/")),
        "`ringshim help` does not search {dir}:\n{help}"
    );
}

#[test]
fn nginx_example_image_starts_nginx_through_ringshim_run() {
    let stages = parse_dockerfile(&read(&deploy().join("Dockerfile.nginx-example")));
    let (lib, cli) = image_paths();
    let default = stages.last().expect("stages");
    // The default target is built on the ringshim image (directly or via a stage alias).
    let base_stage = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(&default.base));
    let root = base_stage.map_or(default.base.as_str(), |s| s.base.as_str());
    assert!(
        root.starts_with("ringshim"),
        "default target not based on the ringshim image: {root}"
    );
    assert_eq!(
        exec_form(default.last("ENTRYPOINT").unwrap()),
        ["ringshim", "run", "--"]
    );
    assert_eq!(
        exec_form(default.last("CMD").unwrap()),
        ["nginx", "-g", "daemon off;"]
    );
    assert_eq!(default.last("STOPSIGNAL"), Some("SIGQUIT"));
    // The variant built on the official nginx image copies the two files to the same
    // places as deploy/Dockerfile, and keeps the image's own entrypoint script.
    let official = stages
        .iter()
        .find(|s| s.name.as_deref() == Some("official"))
        .expect("an `official` target");
    let copies = official.copies();
    assert!(
        copies
            .iter()
            .any(|(s, d, _)| s.len() == 1 && s[0] == lib && *d == lib),
        "{copies:?}"
    );
    assert!(
        copies
            .iter()
            .any(|(s, d, _)| s.len() == 1 && s[0] == cli && *d == cli),
        "{copies:?}"
    );
    let ep = exec_form(official.last("ENTRYPOINT").unwrap());
    assert_eq!(&ep[..3], ["ringshim", "run", "--"]);
}

// ---------------------------------------------------------------------------------------
// YAML: Kubernetes manifests and the Compose file.

const K8S: &[&str] = &[
    "kubernetes/nginx-deployment.yaml",
    "kubernetes/nginx-pod-image.yaml",
    "kubernetes/seccomp-installer.yaml",
];
const COMPOSE: &str = "compose.yaml";

/// What the checks need from a YAML file; found by both readers below.
#[derive(Debug, Default, PartialEq)]
struct Facts {
    ld_preload: Vec<String>,
    localhost_profiles: Vec<String>,
    security_opts: Vec<String>,
    mount_paths: Vec<String>,
    /// RINGSHIM_* variables set in env lists, environment maps and ConfigMaps.
    ringshim_env: Vec<(String, String)>,
}

impl Facts {
    fn sorted(mut self) -> Facts {
        self.ld_preload.sort();
        self.localhost_profiles.sort();
        self.security_opts.sort();
        self.mount_paths.sort();
        self.ringshim_env.sort();
        self
    }
    fn env(&mut self, name: &str, value: String) {
        if name == "LD_PRELOAD" {
            self.ld_preload.push(value);
        } else if name.starts_with("RINGSHIM") {
            self.ringshim_env.push((name.to_string(), value));
        }
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let v = match v.find(" #") {
        Some(i) if !v.starts_with('"') && !v.starts_with('\'') => v[..i].trim(),
        _ => v,
    };
    v.trim_matches('"').trim_matches('\'').to_string()
}

/// The line-based reader (used alone when PyYAML is missing): block-style YAML as these
/// files write it, comments and block scalars skipped.
fn facts_from_lines(text: &str) -> Result<Facts, String> {
    let mut f = Facts::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut block_indent: Option<usize> = None; // inside a `key: |` block scalar
    let mut pending_env: Option<String> = None; // `- name: X` seen, `value:` expected
    for (n, raw) in lines.iter().enumerate() {
        if raw.contains('\t') {
            return Err(format!("line {}: tab character", n + 1));
        }
        let indent = raw.len() - raw.trim_start().len();
        let t = raw.trim();
        if let Some(b) = block_indent {
            if t.is_empty() || indent > b {
                continue;
            }
            block_indent = None;
        }
        if t.is_empty() || t.starts_with('#') || t == "---" {
            continue;
        }
        // `key: |`, `- >-` ...: a block scalar, whose more-indented lines are text.
        let last = t.rsplit(' ').next().unwrap_or("");
        if t.len() > last.len() && ["|", "|-", "|+", ">", ">-", ">+"].contains(&last) {
            block_indent = Some(indent);
            continue;
        }
        let item = t.strip_prefix("- ").unwrap_or(t);
        // Compose's short volume syntax: `- VOLUME:/path[:ro]`.
        if let Some((_, path)) = t.strip_prefix("- ").and_then(|i| i.split_once(":/")) {
            f.mount_paths
                .push(format!("/{}", path.split(':').next().unwrap()));
            continue;
        }
        if let Some(opt) = t.strip_prefix("- ").filter(|o| o.starts_with("seccomp")) {
            f.security_opts.push(unquote(opt));
            continue;
        }
        let Some((key, value)) = item.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), unquote(value));
        match key {
            "name" if t.starts_with("- ") => pending_env = Some(value),
            "value" => {
                if let Some(name) = pending_env.take() {
                    f.env(&name, value);
                }
            }
            "localhostProfile" => f.localhost_profiles.push(value),
            "mountPath" => f.mount_paths.push(value),
            _ if key == "LD_PRELOAD" || key.starts_with("RINGSHIM") => f.env(key, value),
            _ => {}
        }
        if key != "name" && key != "value" {
            pending_env = None;
        }
    }
    Ok(f.sorted())
}

fn facts_from_docs(docs: &[Json]) -> Facts {
    fn walk(j: &Json, f: &mut Facts) {
        match j {
            Json::Obj(kv) => {
                for (k, v) in kv {
                    match (k.as_str(), v) {
                        ("env", Json::Arr(items)) => {
                            for e in items {
                                if let (Some(n), Some(val)) = (
                                    e.get("name").and_then(Json::str),
                                    e.get("value").and_then(Json::scalar_text),
                                ) {
                                    f.env(n, val);
                                }
                            }
                        }
                        ("environment" | "data", Json::Obj(m)) => {
                            for (n, val) in m {
                                if let Some(val) = val.scalar_text() {
                                    f.env(n, val);
                                }
                            }
                        }
                        ("localhostProfile", Json::Str(s)) => f.localhost_profiles.push(s.clone()),
                        ("mountPath", Json::Str(s)) => f.mount_paths.push(s.clone()),
                        ("volumes", Json::Arr(vols)) => f.mount_paths.extend(
                            vols.iter()
                                .filter_map(Json::str)
                                .filter_map(|v| v.split_once(":/"))
                                .map(|(_, p)| format!("/{}", p.split(':').next().unwrap())),
                        ),
                        ("security_opt", Json::Arr(opts)) => f.security_opts.extend(
                            opts.iter()
                                .filter_map(Json::str)
                                .filter(|o| o.starts_with("seccomp"))
                                .map(str::to_string),
                        ),
                        _ => {}
                    }
                    walk(v, f);
                }
            }
            Json::Arr(a) => a.iter().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    let mut f = Facts::default();
    docs.iter().for_each(|d| walk(d, &mut f));
    f.sorted()
}

/// Every file's YAML documents, as JSON, through python3 + PyYAML; None when either is
/// missing (the line-based reader then stands alone).
fn yaml_via_python(files: &[PathBuf]) -> Option<Vec<Vec<Json>>> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        print(json.dumps([[d for d in yaml.safe_load_all(open(p)) if d is not None] for p in sys.argv[1:]]))";
    let Ok(out) = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(files)
        .output()
    else {
        eprintln!("NOTE: no python3: the YAML files get the line-based check only");
        return None;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("No module named 'yaml'") {
            eprintln!(
                "NOTE: PyYAML is not installed: the YAML files get the line-based check only"
            );
            return None;
        }
        panic!("YAML parse failed:\n{stderr}");
    }
    let all = parse_json(&String::from_utf8_lossy(&out.stdout)).expect("python's JSON");
    Some(all.arr().iter().map(|f| f.arr().to_vec()).collect())
}

fn yaml_files() -> Vec<PathBuf> {
    K8S.iter()
        .chain([&COMPOSE])
        .map(|f| deploy().join(f))
        .collect()
}

#[test]
fn manifests_parse_and_agree_with_the_image_and_the_profile() {
    let files = yaml_files();
    let (lib, _) = image_paths();
    let lib_dir = Path::new(&lib)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let profile_name = Path::new(PROFILE)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    let line_facts: Vec<Facts> = files
        .iter()
        .map(|p| facts_from_lines(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    let docs = yaml_via_python(&files);
    if let Some(docs) = &docs {
        for ((p, d), lf) in files.iter().zip(docs).zip(&line_facts) {
            assert_eq!(
                &facts_from_docs(d),
                lf,
                "{}: the two readers disagree",
                p.display()
            );
        }
    }

    for (p, f) in files.iter().zip(&line_facts) {
        let what = p.display();
        for v in &f.ld_preload {
            assert_eq!(
                v, &lib,
                "{what}: LD_PRELOAD is not where deploy/Dockerfile installs the library"
            );
        }
        for v in &f.localhost_profiles {
            assert_eq!(v, &format!("profiles/{profile_name}"), "{what}");
        }
        for v in &f.security_opts {
            let path = v
                .strip_prefix("seccomp=")
                .or_else(|| v.strip_prefix("seccomp:"))
                .unwrap();
            // Compose resolves it against the compose file's directory.
            let resolved = p.parent().unwrap().join(path);
            assert_eq!(
                std::fs::canonicalize(&resolved).ok(),
                std::fs::canonicalize(deploy().join(PROFILE)).ok(),
                "{what}: {v}"
            );
        }
        // Where a file preloads the library from a mounted volume, the volume sits in
        // the library's directory.
        if !f.ld_preload.is_empty() {
            assert!(
                f.mount_paths.contains(&lib_dir),
                "{what}: nothing mounted at {lib_dir}"
            );
        }
    }
    let deployment = &line_facts[0];
    assert_eq!(deployment.ld_preload, [lib.as_str()]);
    assert_eq!(deployment.localhost_profiles.len(), 1);
    assert!(deployment
        .ringshim_env
        .contains(&("RINGSHIM_KERNEL_NETS".to_string(), "loopback".to_string())));
    let pod = &line_facts[1];
    assert!(
        pod.ld_preload.is_empty(),
        "the image's `ringshim run` sets LD_PRELOAD"
    );
    assert_eq!(pod.localhost_profiles.len(), 1);
    let compose = &line_facts[3];
    assert_eq!(
        compose.security_opts.len(),
        3,
        "every compose service uses the profile"
    );
    // The installer writes the file where the kubelet looks for `profiles/<name>`.
    let installer = read(&deploy().join(K8S[2]));
    assert!(installer.contains("path: /var/lib/kubelet/seccomp\n"));
    assert!(installer.contains(&format!("/host-seccomp/profiles/{profile_name} ")));
    assert!(installer.contains(&format!("ringshim.json=deploy/{PROFILE}")));

    let Some(docs) = docs else { return };
    check_deployment_structure(&docs[0], &lib, &lib_dir);
    check_pod_structure(&docs[1]);
    check_compose_structure(&docs[3], &lib, &lib_dir);
}

/// Compose's init pattern: a one-shot `ringshim-install DIR` service fills a named
/// volume, and the service preloading the library mounts it read-only in the library's
/// directory and starts only after the install succeeded.
fn check_compose_structure(docs: &[Json], lib: &str, lib_dir: &str) {
    let services = docs[0].get("services").expect("services").obj();
    let strs = |j: Option<&Json>| -> Vec<String> {
        j.map(Json::arr)
            .unwrap_or(&[])
            .iter()
            .filter_map(Json::str)
            .map(str::to_string)
            .collect()
    };
    let (install_name, install) = services
        .iter()
        .find(|(_, s)| {
            strs(s.get("command")).first().map(String::as_str) == Some("ringshim-install")
        })
        .expect("a ringshim-install service");
    let dir = &strs(install.get("command"))[1];
    let volume = strs(install.get("volumes"))
        .into_iter()
        .find_map(|v| v.strip_suffix(&format!(":{dir}")).map(str::to_string))
        .expect("the install directory is a volume");
    let (_, app) = services
        .iter()
        .find(|(_, s)| s.at(&["environment", "LD_PRELOAD"]).and_then(Json::str) == Some(lib))
        .expect("a service preloading the library");
    assert!(
        strs(app.get("volumes")).contains(&format!("{volume}:{lib_dir}:ro")),
        "the app mounts {volume} read-only at {lib_dir}"
    );
    assert_eq!(
        app.at(&["depends_on", install_name, "condition"])
            .and_then(Json::str),
        Some("service_completed_successfully")
    );
}

/// The init-container pattern, end to end in the manifest: the init container runs the
/// ringshim image's `ringshim-install DIR` on an emptyDir, the application container
/// mounts that volume (read-only) in the library's directory and preloads from it; the
/// seccomp profile covers both containers.
fn check_deployment_structure(docs: &[Json], lib: &str, lib_dir: &str) {
    let dep = docs
        .iter()
        .find(|d| d.get("kind").and_then(Json::str) == Some("Deployment"))
        .expect("a Deployment");
    let spec = dep.at(&["spec", "template", "spec"]).expect("pod spec");
    assert_eq!(
        spec.at(&["securityContext", "seccompProfile", "type"])
            .and_then(Json::str),
        Some("Localhost"),
        "pod-level seccompProfile (init and app containers)"
    );
    let init = &spec.get("initContainers").expect("initContainers").arr()[0];
    let command: Vec<&str> = init
        .get("command")
        .unwrap()
        .arr()
        .iter()
        .filter_map(Json::str)
        .collect();
    assert_eq!(command.len(), 2);
    assert_eq!(command[0], "ringshim-install");
    let mount = |c: &Json, path: &str| -> Option<(String, bool)> {
        c.get("volumeMounts")?.arr().iter().find_map(|m| {
            (m.get("mountPath")?.str()? == path).then(|| {
                (
                    m.get("name")
                        .and_then(Json::str)
                        .unwrap_or_default()
                        .to_string(),
                    m.get("readOnly").and_then(Json::bool).unwrap_or(false),
                )
            })
        })
    };
    let (init_vol, _) =
        mount(init, command[1]).expect("init container mounts its install directory");
    let app = spec
        .get("containers")
        .unwrap()
        .arr()
        .iter()
        .find(|c| {
            c.get("env").map(Json::arr).unwrap_or(&[]).iter().any(|e| {
                e.get("name").and_then(Json::str) == Some("LD_PRELOAD")
                    && e.get("value").and_then(Json::str) == Some(lib)
            })
        })
        .expect("an app container preloading the library");
    let (app_vol, read_only) =
        mount(app, lib_dir).expect("app container mounts the library directory");
    assert_eq!(
        app_vol, init_vol,
        "the app mounts the volume the init container fills"
    );
    assert!(
        read_only,
        "the library volume is mounted read-only in the app"
    );
    let vol = spec
        .get("volumes")
        .unwrap()
        .arr()
        .iter()
        .find(|v| v.get("name").and_then(Json::str) == Some(&app_vol))
        .expect("the volume");
    assert!(vol.get("emptyDir").is_some(), "an emptyDir");
    for c in [init, app] {
        assert!(
            c.at(&["resources", "limits", "memory"]).is_some(),
            "memory limit"
        );
    }
    // The same RINGSHIM_* source for both, so doctor in the init container judges what
    // the app's library will read.
    let env_from = |c: &Json| format!("{:?}", c.get("envFrom"));
    assert_eq!(env_from(init), env_from(app));
}

/// The image-layer Pod must not override the image's ENTRYPOINT (`ringshim run --`).
fn check_pod_structure(docs: &[Json]) {
    let pod = &docs[0];
    assert_eq!(pod.get("kind").and_then(Json::str), Some("Pod"));
    for c in pod.at(&["spec", "containers"]).unwrap().arr() {
        assert!(
            c.get("command").is_none(),
            "`command:` would replace ENTRYPOINT [ringshim run --]"
        );
    }
}

#[test]
fn yaml_line_reader_finds_what_it_should() {
    let text = "\
# LD_PRELOAD: /not/this
a:
  env:
    - name: LD_PRELOAD
      value: /usr/lib/x.so # comment
    - name: OTHER
      value: x
    - name: RINGSHIM_LOG
      value: \"info\"
  conf: |
    RINGSHIM_BACKEND: inside a block scalar
    mountPath: /nope
  environment:
    RINGSHIM_KERNEL_NETS: loopback
  security_opt:
    - seccomp=./p.json
  volumeMounts:
    - mountPath: /m
      name: v
";
    let f = facts_from_lines(text).unwrap();
    assert_eq!(f.ld_preload, ["/usr/lib/x.so"]);
    assert_eq!(
        f.ringshim_env,
        [
            ("RINGSHIM_KERNEL_NETS".to_string(), "loopback".to_string()),
            ("RINGSHIM_LOG".to_string(), "info".to_string())
        ]
    );
    assert_eq!(f.security_opts, ["seccomp=./p.json"]);
    assert_eq!(f.mount_paths, ["/m"]);
    assert!(facts_from_lines("a:\n\tb: 1\n").is_err());
}

// ---------------------------------------------------------------------------------------
// The RINGSHIM_* values in every deploy file are ones the library accepts.

fn documented_variables() -> Vec<String> {
    read(&common::repo_root().join("README.md"))
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|v| v.starts_with("RINGSHIM"))
        .map(str::to_string)
        .collect()
}

#[test]
fn configuration_in_deploy_files_is_valid() {
    let mut sets: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for p in yaml_files() {
        let mut m = BTreeMap::new();
        for (k, v) in facts_from_lines(&read(&p)).unwrap().ringshim_env {
            if let Some(old) = m.insert(k.clone(), v.clone()) {
                assert_eq!(old, v, "{}: {k} set to two values", p.display());
            }
        }
        sets.push((p.display().to_string(), m));
    }
    for f in ["Dockerfile", "Dockerfile.nginx-example"] {
        for (i, s) in parse_dockerfile(&read(&deploy().join(f)))
            .iter()
            .enumerate()
        {
            sets.push((format!("{f} stage {i}"), s.env()));
        }
    }
    let documented = documented_variables();
    assert!(documented.len() > 10, "README table not found");
    let mut checked = 0;
    for (what, vars) in &sets {
        for k in vars.keys().filter(|k| k.starts_with("RINGSHIM")) {
            assert!(
                documented.contains(k),
                "{what}: {k} is not in the README's table"
            );
        }
        if vars.is_empty() {
            continue;
        }
        let out = clean_command(cli())
            .args(["doctor", "--json"])
            .envs(vars)
            .output()
            .unwrap();
        let report = parse_json(&String::from_utf8_lossy(&out.stdout)).expect("doctor --json");
        assert!(
            out.status.success() && report.at(&["config", "valid"]) == Some(&Json::Bool(true)),
            "{what}: {vars:?} rejected: {:?} {}",
            report.at(&["config", "errors"]),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected RINGSHIM_* settings in the deploy files"
    );
}

// ---------------------------------------------------------------------------------------
// The init container's install step.

#[test]
fn install_script_copies_a_library_and_cli_that_work_together() {
    let script = deploy().join("ringshim-install.sh");
    if Command::new("shellcheck").arg("--version").output().is_ok() {
        let out = Command::new("shellcheck").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let scratch = Scratch::new("install");
    let dest = scratch.path("vol");
    let cli_dir = cli().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        cli_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |extra: &[(&str, &str)]| {
        clean_command("sh")
            .arg(&script)
            .arg(&dest)
            .env("PATH", &path)
            .env("RINGSHIM_LIBRARY", common::shim_lib())
            .envs(extra.iter().copied())
            .output()
            .unwrap()
    };
    let out = run(&[("RINGSHIM_KERNEL_NETS", "loopback")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ringshim doctor"),
        "doctor report in the log: {stdout}"
    );
    assert_eq!(
        std::fs::read(dest.join("libringshim.so")).unwrap(),
        std::fs::read(common::shim_lib()).unwrap()
    );
    // The CLI in the volume finds the library beside it: `kubectl exec ...
    // /usr/lib/ringshim/ringshim run|stat` works in the app container.
    let out = clean_command(dest.join("ringshim"))
        .args(["run", "--", "sh", "-c", "printf %s \"$LD_PRELOAD\""])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        dest.join("libringshim.so").to_string_lossy(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A configuration the library would ignore stops the pod in its init container.
    let out = run(&[("RINGSHIM_KERNEL_NETS", "bogus")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("RINGSHIM_KERNEL_NETS"));
}

// ---------------------------------------------------------------------------------------
// Behaviour under the profile, applied with libseccomp as a runtime applies it.

/// dp_seccomp and the rules file of the profile (minus `drop`), or None to skip.
fn seccomp_launcher(scratch: &Scratch, drop: &[&str]) -> Option<(PathBuf, PathBuf)> {
    if !common::require(common::io_uring_available(), "io_uring") {
        return None;
    }
    let exe = common::c_program("dp_seccomp");
    let rules = scratch.path(if drop.is_empty() {
        "profile.rules"
    } else {
        "docker-default.rules"
    });
    std::fs::write(&rules, profile().rules_text(drop)).unwrap();
    // libseccomp is a run-time dependency of apt on Debian; dp_seccomp exits 126 without it.
    let probe = Command::new(&exe).arg(&rules).arg("true").status().unwrap();
    if !common::require(probe.code() != Some(126), "libseccomp.so.2") {
        return None;
    }
    assert!(
        probe.success(),
        "dp_seccomp could not load the profile: {probe}"
    );
    Some((exe, rules))
}

fn doctor_under(exe: &Path, rules: &Path) -> Json {
    let out = clean_command(exe)
        .arg(rules)
        .arg(cli())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_json(&String::from_utf8_lossy(&out.stdout)).expect("doctor --json")
}

fn uring_verdict(report: &Json) -> (bool, String) {
    let b = report
        .get("backends")
        .unwrap()
        .arr()
        .iter()
        .find(|b| b.get("name").and_then(Json::str) == Some("uring"))
        .unwrap();
    (
        b.get("works").and_then(Json::bool).unwrap(),
        b.get("verdict").and_then(Json::str).unwrap().to_string(),
    )
}

#[test]
fn doctor_under_the_profile_finds_io_uring_and_docker_default_refuses_it() {
    let scratch = Scratch::new("doctor");
    let Some((exe, rules)) = seccomp_launcher(&scratch, &[]) else {
        return;
    };
    let report = doctor_under(&exe, &rules);
    assert_eq!(
        report.at(&["host", "io_uring_setup", "works"]),
        Some(&Json::Bool(true))
    );
    let (works, verdict) = uring_verdict(&report);
    assert!(works, "{verdict}");
    // Under the profile, every probe (SQPOLL, buffer rings, multishot receive, opcodes,
    // limits) finds what it finds with no filter at all.
    let out = clean_command(cli())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let unfiltered = parse_json(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(report.get("host"), unfiltered.get("host"));
    // The filter is really there: what Docker refuses stays refused.
    let out = Command::new(&exe)
        .arg(&rules)
        .args(["unshare", "-U", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "unshare(CLONE_NEWUSER) was allowed");

    let (_, docker_rules) = seccomp_launcher(&scratch, IO_URING).unwrap();
    let report = doctor_under(&exe, &docker_rules);
    let (works, verdict) = uring_verdict(&report);
    assert!(!works && verdict.contains("EPERM"), "{verdict}");
}

/// A child process killed (with its stats-page-listed descendants) when dropped.
struct Server {
    child: std::process::Child,
    stats_dir: PathBuf,
}

impl Server {
    fn pages(&self) -> Vec<i32> {
        std::fs::read_dir(&self.stats_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("ringshim.")?
                    .parse()
                    .ok()
            })
            .collect()
    }
    fn stat(&self, pid: i32) -> Json {
        let out = clean_command(cli())
            .args(["stat", "--dir"])
            .arg(&self.stats_dir)
            .args([&pid.to_string(), "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stat {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_json(&String::from_utf8_lossy(&out.stdout)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let master = self.child.id() as i32;
        // SIGTERM: nginx's master stops its workers and waits for them; redis exits.
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(master, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still running: kill the master's children (they are still its children, so
        // these pids are ours), then the master.
        for pid in self.pages() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            if pid != master && ppid == Some(&master.to_string()) {
                // SAFETY: a child of our (unreaped) child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, server: &mut Server, log: &Path) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `request` on a new loopback connection and reads `expect.len()` bytes (or to
/// the end of the stream when `to_eof`).
fn exchange(port: u16, request: &[u8], to_eof: bool) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    if to_eof {
        s.read_to_end(&mut buf).unwrap();
    } else {
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Starts `server_cmd` the way the images do (`ringshim run -- CMD`), under the profile
/// (minus `drop`), with loopback accelerated so that this test's loopback clients reach
/// the rings.
fn start_under_profile(
    scratch: &Scratch,
    exe: &Path,
    rules: &Path,
    server_cmd: &[&str],
) -> (Server, PathBuf) {
    let stats_dir = scratch.path("stats");
    std::fs::create_dir_all(&stats_dir).unwrap();
    // Workers that dropped privileges (nginx's run as nobody) publish their pages too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stats_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let log = scratch.path("server.log");
    let child = clean_command(exe)
        .arg(rules)
        .arg(cli())
        .args(["run", "--"])
        .args(server_cmd)
        .env("RINGSHIM_LIBRARY", common::shim_lib())
        .env("RINGSHIM_KERNEL_NETS", "none")
        .env("RINGSHIM_LOG", "info")
        .env("RINGSHIM_STATS_DIR", &stats_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(scratch.path("server.err")).unwrap())
        .spawn()
        .unwrap();
    (Server { child, stats_dir }, log)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn redis_under_the_profile_uses_io_uring_and_fails_open_without_it() {
    if !common::require(have("redis-server"), "redis-server") {
        return;
    }
    for docker_default in [false, true] {
        let scratch = Scratch::new(if docker_default {
            "redis-docker"
        } else {
            "redis"
        });
        let drop: &[&str] = if docker_default { IO_URING } else { &[] };
        let Some((exe, rules)) = seccomp_launcher(&scratch, drop) else {
            return;
        };
        let port = free_port().to_string();
        let dir = scratch.0.to_string_lossy().into_owned();
        let (mut server, log) = start_under_profile(
            &scratch,
            &exe,
            &rules,
            &[
                "redis-server",
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
            ],
        );
        let port: u16 = port.parse().unwrap();
        wait_for_port(port, &mut server, &log);
        assert_eq!(exchange(port, b"PING\r\n", false), "+PONG\r\n");
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        assert_eq!(exchange(port, set, false), "+OK\r\n");
        assert_eq!(
            exchange(port, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", false),
            "$5\r\nhello\r\n"
        );

        let page = server.stat(server.child.id() as i32);
        let active = page.get("backend_active").and_then(Json::bool);
        let on_uring = page.at(&["totals", "sockets_on_uring"]).and_then(Json::u64);
        let err = std::fs::read_to_string(scratch.path("server.err")).unwrap();
        if docker_default {
            assert_eq!((active, on_uring), (Some(false), Some(0)), "{err}");
            assert!(
                err.contains("io_uring unavailable") && err.contains("EPERM"),
                "{err}"
            );
        } else {
            assert_eq!(active, Some(true), "{err}");
            assert!(on_uring >= Some(3), "sockets_on_uring {on_uring:?}: {err}");
            assert!(!err.contains("unavailable"), "{err}");
        }
    }
}

#[test]
fn nginx_under_the_profile_serves_through_io_uring() {
    if !common::require(have("nginx"), "nginx") {
        return;
    }
    let scratch = Scratch::new("nginx");
    let Some((exe, rules)) = seccomp_launcher(&scratch, &[]) else {
        return;
    };
    let port = free_port();
    let d = scratch.0.display();
    std::fs::create_dir_all(scratch.path("html")).unwrap();
    std::fs::create_dir_all(scratch.path("tmp")).unwrap();
    std::fs::write(scratch.path("html/index.html"), "ringshim in a container\n").unwrap();
    // nginx's workers run as nobody when the test runs as root: let them read the files.
    use std::os::unix::fs::PermissionsExt;
    for p in [
        scratch.0.clone(),
        scratch.path("html"),
        scratch.path("html/index.html"),
    ] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let conf = scratch.path("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n\
             client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
             uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
             server {{ listen 127.0.0.1:{port}; root {d}/html; }}\n}}\n"
        ),
    )
    .unwrap();
    let conf = conf.to_string_lossy().into_owned();
    let error_log = format!("{d}/error.log");
    let (mut server, _) = start_under_profile(
        &scratch,
        &exe,
        &rules,
        &["nginx", "-e", &error_log, "-c", &conf, "-g", "daemon off;"],
    );
    wait_for_port(port, &mut server, Path::new(&error_log));
    for _ in 0..6 {
        let reply = exchange(
            port,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            true,
        );
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("ringshim in a container\n"), "{reply}");
    }
    let master = server.child.id() as i32;
    let mut on_uring = 0;
    let mut workers = 0;
    for pid in server.pages().into_iter().filter(|&p| p != master) {
        let page = server.stat(pid);
        if page.get("alive").and_then(Json::bool) != Some(true) {
            continue;
        }
        workers += 1;
        assert_eq!(
            page.get("backend_active").and_then(Json::bool),
            Some(true),
            "worker {pid}"
        );
        on_uring += page
            .at(&["totals", "sockets_on_uring"])
            .and_then(Json::u64)
            .unwrap_or(0);
    }
    // A worker publishes its page once it has handled something: one or both, depending
    // on which woke first for each connection.
    assert!(workers >= 1, "no worker published counters");
    assert!(
        on_uring >= 6,
        "accepted connections on io_uring: {on_uring}"
    );
}

/// A profile that allows only some of the three io_uring calls (hand-written profiles
/// do this) must still leave the server working, on the kernel path: invariant 5.
/// Found while writing these tests: with io_uring_enter refused, redis-server's
/// epoll_wait fails with EPERM and redis aborts; with io_uring_register refused, its
/// first client gets no answer. `ringshim doctor` reports both hosts correctly as
/// "falls back to kernel"; the library does not. Run with `--ignored` once fixed.
#[test]
fn partial_io_uring_allow_list_fails_open() {
    if !common::require(have("redis-server"), "redis-server") {
        return;
    }
    for refused in ["io_uring_enter", "io_uring_register"] {
        let scratch = Scratch::new(&format!("partial-{refused}"));
        let Some((exe, rules)) = seccomp_launcher(&scratch, &[refused]) else {
            return;
        };
        let port = free_port();
        let (port_s, dir) = (port.to_string(), scratch.0.to_string_lossy().into_owned());
        let (mut server, log) = start_under_profile(
            &scratch,
            &exe,
            &rules,
            &[
                "redis-server",
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                &dir,
            ],
        );
        wait_for_port(port, &mut server, &log);
        assert_eq!(
            exchange(port, b"PING\r\n", false),
            "+PONG\r\n",
            "{refused} refused"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "{refused} refused: redis-server died: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

// ---------------------------------------------------------------------------------------
// `ringshim stat` permissions: nothing for other users to read.

/// A scratch directory under /tmp that every user can traverse (the clone may live in a
/// private home directory, and uid 65534 must reach the copies made here).
struct OpenScratch(PathBuf);

impl OpenScratch {
    fn new(name: &str) -> OpenScratch {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ringshim-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("stats")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Like /dev/shm: world-writable and sticky.
        std::fs::set_permissions(dir.join("stats"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        OpenScratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// A copy of `file` here, executable and readable by everyone.
    fn copy(&self, file: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let to = self.path(file.file_name().unwrap().to_str().unwrap());
        std::fs::copy(file, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        to
    }
}

impl Drop for OpenScratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `program` run as `uid` (gid the same, no supplementary groups), or as ourselves.
fn as_user(uid: Option<u32>, program: &Path) -> Command {
    match uid {
        Some(uid) => {
            let mut cmd = clean_command("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--clear-groups", "--"])
                .arg(program);
            cmd
        }
        None => clean_command(program),
    }
}

/// A shimmed dp_statpage: it publishes its page when told to (`publish`).
struct PageOwner {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl PageOwner {
    /// Started as `uid` with the given umask; its page goes to `stats`.
    fn start(uid: Option<u32>, umask: u32, exe: &Path, lib: &Path, stats: &Path) -> PageOwner {
        use std::os::unix::process::CommandExt;
        let mut cmd = as_user(uid, exe);
        cmd.env("LD_PRELOAD", lib)
            .env("RINGSHIM_STATS_DIR", stats)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: umask is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask as libc::mode_t);
                Ok(())
            })
        };
        let mut child = cmd.spawn().unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        PageOwner { child, out }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Opens its first TCP socket (so the shim publishes the page) and waits for it.
    fn publish(&mut self) {
        use std::io::BufRead;
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("ready {}", self.pid()), "dp_statpage");
    }
}

impl Drop for PageOwner {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.wait_timeout_ok().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

trait WaitTimeout {
    fn wait_timeout_ok(&mut self) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for std::process::Child {
    fn wait_timeout_ok(&mut self) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(s)) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// `ringshim stat PID` run as `uid` (None: as the test, root): exit code and stderr.
fn stat_as(uid: Option<u32>, cli: &Path, stats: &Path, pid: u32) -> (i32, String) {
    let out = as_user(uid, cli)
        .args(["stat", "--dir"])
        .arg(stats)
        .arg(pid.to_string())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The page's owner uid and permission bits.
fn page_owner_and_mode(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stats page {}: {e}", path.display()));
    assert!(
        m.file_type().is_file(),
        "{} is not a plain file",
        path.display()
    );
    (m.uid(), m.mode() & 0o7777)
}

/// The stats page a process publishes is mode 0600 and owned by the process's uid,
/// whatever its umask and whatever a dead process left at that name; `ringshim stat`
/// run by another user is refused (exit 1, "permission denied" and the reason), while
/// the owner and root read it.
#[test]
fn stats_page_is_private_to_its_owner() {
    if !common::require(
        common::is_root() && have("setpriv"),
        "root and setpriv (to act as uid 65534)",
    ) {
        return;
    }
    const NOBODY: u32 = 65534;
    const OTHER: u32 = 65533;
    let scratch = OpenScratch::new("stat-perm");
    let stats = scratch.path("stats");
    let cli = scratch.copy(&cli());
    let lib = scratch.copy(&common::shim_lib());
    let exe = scratch.copy(&common::c_program("dp_statpage"));
    let refused = |uid: u32, pid: u32, whose: &str| {
        let (code, err) = stat_as(Some(uid), &cli, &stats, pid);
        assert_eq!(
            code, 1,
            "uid {uid} reading {whose} page: exit {code}: {err}"
        );
        assert!(
            err.contains("permission denied") && err.contains("0600"),
            "uid {uid} reading {whose} page: {err}"
        );
    };
    let reads = |uid: Option<u32>, pid: u32, whose: &str| {
        let (code, err) = stat_as(uid, &cli, &stats, pid);
        assert_eq!(code, 0, "{uid:?} reading {whose} page: {err}");
    };

    // A root process whose pid a dead uid-65534 process used before, leaving a
    // world-readable file at the page's name: the page must not be that file.
    let mut root_owned = PageOwner::start(None, 0o022, &exe, &common::shim_lib(), &stats);
    let page = stats.join(format!("ringshim.{}", root_owned.pid()));
    std::fs::write(&page, b"left behind").unwrap();
    std::os::unix::fs::chown(&page, Some(NOBODY), Some(NOBODY)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&page, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    root_owned.publish();
    assert_eq!(page_owner_and_mode(&page), (0, 0o600), "root's page");
    reads(None, root_owned.pid(), "root's");
    refused(NOBODY, root_owned.pid(), "root's");

    // A uid-65534 process with umask 0777: still 0600 (else its owner could not read it).
    let mut nobody_owned = PageOwner::start(Some(NOBODY), 0o777, &exe, &lib, &stats);
    nobody_owned.publish();
    let page = stats.join(format!("ringshim.{}", nobody_owned.pid()));
    assert_eq!(
        page_owner_and_mode(&page),
        (NOBODY, 0o600),
        "uid {NOBODY}'s page"
    );
    reads(Some(NOBODY), nobody_owned.pid(), "its own");
    reads(None, nobody_owned.pid(), "uid 65534's");
    refused(OTHER, nobody_owned.pid(), "uid 65534's");
}
