//! The stub processes as the operating system sees them: each stub leads its own process group,
//! is watched through a pidfd (its exit is seen even while a forked helper still holds its socket),
//! and is ended together with its group. Descendants that left the group (a daemon's double fork
//! and `setsid`) are re-parented to the server, which makes itself a child subreaper, and carry
//! [`STUB_TAG`] in their environment (the server's pid and the stub's number): ending a stub
//! finds and ends them too.
//!
//! A lifeline pipe ends stubs even when the server dies without cleaning up (a crash, SIGKILL):
//! every stub inherits its read end, the server alone holds the write end, and the stub kills
//! its own group when the read sees end-of-file.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Set in every stub's environment to `<server pid>.<stub number>`; its descendants inherit it.
pub const STUB_TAG: &str = "TRITIUM_PYTHON_STUB_OF";

static NEXT_STUB: AtomicU64 = AtomicU64::new(1);

/// The process groups of the stubs not yet reaped.
static GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// A stub process: its `Child` (for reaping and its status) and a pidfd naming exactly it.
pub struct StubProcess {
    /// The child and whether it has been reaped, under one lock: reaping and killing exclude
    /// each other.
    inner: Mutex<Inner>,
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// The value of [`STUB_TAG`] in its environment.
    tag: String,
}

struct Inner {
    child: Child,
    reaped: bool,
}

impl StubProcess {
    /// Starts `command` tagged, in a process group of its own, and tracks it.
    pub fn spawn(command: &mut Command) -> std::io::Result<StubProcess> {
        use std::os::unix::process::CommandExt;
        become_subreaper();
        let tag = format!("{}.{}", std::process::id(), NEXT_STUB.fetch_add(1, Ordering::Relaxed));
        let child = command.env(STUB_TAG, &tag).process_group(0).spawn()?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        GROUPS.lock().insert(pid);
        Ok(StubProcess { inner: Mutex::new(Inner { child, reaped: false }), pid, pidfd: pidfd_open(pid), tag })
    }

    /// Waits (on this thread) until the stub has exited, whoever reaps it; `false` where this
    /// kernel has no pidfd (the socket's end-of-file is then the only sign).
    pub fn wait_exit(&self) -> bool {
        let Some(fd) = &self.pidfd else { return false };
        let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, -1) };
            if ready > 0 {
                return true;
            }
            if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return false;
            }
        }
    }

    /// Ends the stub and everything still in its process group, then reaps it; the exit status
    /// in words, when this call reaped it.
    pub fn kill(&self) -> Option<String> {
        let status = {
            let mut inner = self.inner.lock();
            if inner.reaped {
                return None;
            }
            // The leader is not reaped yet, so its pid (the group's id) cannot have been reused.
            // SAFETY: killpg has no memory effects.
            unsafe { libc::killpg(self.pid, libc::SIGKILL) };
            let status = inner.child.wait().ok().map(|s| s.to_string());
            inner.reaped = true;
            status
        };
        self.forget();
        status
    }

    /// Reaps the stub if it has exited (killing what is left of its group first); `None` while
    /// it runs.
    pub fn try_reap(&self) -> Option<String> {
        let status = {
            let mut inner = self.inner.lock();
            if inner.reaped {
                return Some(String::new());
            }
            if !self.exited() {
                return None;
            }
            // Exited but not reaped: the zombie still holds the pid, so the group id is safe.
            // SAFETY: killpg has no memory effects.
            unsafe { libc::killpg(self.pid, libc::SIGKILL) };
            let status = inner.child.wait().map(|s| s.to_string()).unwrap_or_default();
            inner.reaped = true;
            status
        };
        self.forget();
        Some(status)
    }

    /// Whether the stub has exited (without reaping it).
    fn exited(&self) -> bool {
        // SAFETY: waitid fills the zeroed siginfo; WNOWAIT leaves the child to be reaped.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            let id = libc::id_t::try_from(self.pid).unwrap_or(0);
            libc::waitid(libc::P_PID, id, &mut info, flags) != 0 || info.si_pid() != 0
        }
    }

    /// After reaping: no longer tracked; its descendants outside the group are ended.
    fn forget(&self) {
        GROUPS.lock().remove(&self.pid);
        sweep(&self.tag_entry(), Match::Exact);
    }

    /// The environment entry that marks this stub's descendants.
    fn tag_entry(&self) -> String {
        format!("{STUB_TAG}={}", self.tag)
    }

    /// Waits up to `limit` for the stub to exit by itself (after `finalize`), then kills it.
    pub fn wait_or_kill(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.try_reap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

impl Drop for StubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the descriptor was just created and nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Called once before the first stub starts: orphaned descendants of stubs come to the server
/// (not to init), where [`sweep`] can reap and end them.
pub fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: prctl with these arguments only sets a flag on this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });
}

/// The read end of the lifeline every stub inherits (as fd 5); the write end stays in this
/// process (close-on-exec) until it exits.
pub fn lifeline() -> Option<RawFd> {
    static LIFELINE: OnceLock<Option<(OwnedFd, OwnedFd)>> = OnceLock::new();
    LIFELINE
        .get_or_init(|| {
            let mut fds = [0 as RawFd; 2];
            // SAFETY: pipe2 fills two descriptors, both close-on-exec.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return None;
            }
            // SAFETY: both descriptors were just created and are owned here alone.
            Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
        })
        .as_ref()
        .map(|(read, _)| read.as_raw_fd())
}

/// Ends every stub still running (a load still in `initialize`, a stub stuck in `execute`) with
/// its group, then every descendant of a stub that left its group: the last step before the
/// server exits. Returns how many processes it ended.
pub fn end_all() -> usize {
    let groups: Vec<i32> = GROUPS.lock().iter().copied().collect();
    for group in &groups {
        // SAFETY: killpg has no memory effects; the group's leader is not reaped yet.
        unsafe { libc::killpg(*group, libc::SIGKILL) };
    }
    groups.len() + sweep(&format!("{STUB_TAG}={}.", std::process::id()), Match::Prefix)
}

/// How an environment entry is compared with a tag: one stub's (exactly), or every stub's of
/// this server (the `<server pid>.` prefix).
#[derive(Clone, Copy)]
enum Match {
    Exact,
    Prefix,
}

/// Ends the processes whose environment holds `tag` (as `how` compares; other than the stubs
/// still tracked), reaping those that are the server's children, and reaps the server's
/// untracked zombie children (descendants re-parented here that have died). Returns how many it
/// ended.
fn sweep(tag: &str, how: Match) -> usize {
    let me = std::process::id();
    let mut ended = 0;
    // Descendants of a killed process re-parent one level at a time: a few rounds find them all.
    for _ in 0..8 {
        let found = tagged_processes(me, tag, how);
        if found.is_empty() {
            break;
        }
        for (pid, parent) in found {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            if parent == me {
                let mut status = 0;
                // SAFETY: reaps this one child of ours; the pointer is valid.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
            ended += 1;
        }
    }
    ended
}

/// Processes (pid, parent pid) with `tag` in their environment, other than the stubs the server
/// still tracks; and the server's untracked children that are zombies (whose
/// environment can no longer be read).
fn tagged_processes(me: u32, tag: &str, how: Match) -> Vec<(i32, u32)> {
    let tracked = GROUPS.lock().clone();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if tracked.contains(&pid) || u32::try_from(pid).ok() == Some(me) {
            continue;
        }
        let Some((state, parent)) = state_and_parent(pid) else { continue };
        if state == 'Z' {
            if parent == me {
                found.push((pid, parent));
            }
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let tagged = |entry: &[u8]| match how {
            Match::Exact => entry == tag.as_bytes(),
            Match::Prefix => entry.starts_with(tag.as_bytes()),
        };
        if environ.split(|&b| b == 0).any(tagged) {
            found.push((pid, parent));
        }
    }
    found
}

/// A process's state letter and parent pid, from `/proc/PID/stat` (the fields after the
/// command's closing paren).
fn state_and_parent(pid: i32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(process: &StubProcess) -> usize {
        tagged_processes(std::process::id(), &process.tag_entry(), Match::Exact).len()
    }

    #[test]
    fn a_stubs_group_and_its_escaped_descendants_are_ended_with_it() {
        // A leader that forks a helper in its group and a daemon that leaves it (setsid), then waits.
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 300 & setsid sh -c 'sleep 300' & wait"]);
        let process = StubProcess::spawn(&mut command).expect("sh runs");
        // Generous: on a loaded machine the shells take a while to fork.
        let deadline = Instant::now() + Duration::from_secs(60);
        while tagged(&process) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(tagged(&process) >= 3, "the helper, the daemon and its sh are running");
        assert!(GROUPS.lock().contains(&process.pid));
        assert!(process.kill().is_some());
        assert!(!GROUPS.lock().contains(&process.pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tagged(&process) > 0 && Instant::now() < deadline {
            sweep(&process.tag_entry(), Match::Exact);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tagged(&process), 0, "nothing of the stub's is left");
        assert!(process.wait_exit(), "the pidfd reports the exit");
    }

    #[test]
    fn ending_one_stub_spares_a_stub_whose_number_it_prefixes() {
        let me = std::process::id();
        let spawn =
            |number: &str| Command::new("sleep").arg("300").env(STUB_TAG, format!("{me}.{number}")).spawn().expect("sleep runs");
        let (mut one, mut ten) = (spawn("900001"), spawn("9000010"));
        // A process shows its tag once it has exec'd: on a loaded machine that takes a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        for number in ["900001", "9000010"] {
            let entry = format!("{STUB_TAG}={me}.{number}");
            while tagged_processes(me, &entry, Match::Exact).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // At least one: the sweep also reaps this process's untracked zombie children, and the
        // tests running beside this one may leave one for an instant.
        let ended = sweep(&format!("{STUB_TAG}={me}.900001"), Match::Exact);
        assert!(ended >= 1, "stub 900001's process is among those ended");
        // Reaped by the sweep (its parent is this process): the status is gone with it.
        assert!(!matches!(one.try_wait(), Ok(None)), "stub 900001's process is ended");
        assert!(matches!(ten.try_wait(), Ok(None)), "stub 9000010's process still runs");
        let _ = ten.kill();
        let _ = ten.wait();
    }
}
