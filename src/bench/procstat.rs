//! A process's CPU time and resident memory, read from /proc (Linux).

use std::time::Duration;

/// Clock ticks per second of /proc's times: `USER_HZ`, which Linux fixes at 100 for every
/// architecture's user ABI.
const USER_HZ: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS, in bytes.
    pub rss_bytes: u64,
    /// Context switches (voluntary and not) of every thread alive now.
    pub context_switches: u64,
    /// Threads.
    pub threads: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub(crate) fn read(pid: u32) -> std::io::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut context_switches = 0;
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                context_switches += field(&s, "voluntary_ctxt_switches:").unwrap_or(0)
                    + field(&s, "nonvoluntary_ctxt_switches:").unwrap_or(0);
            }
        }
        Ok(ProcSample {
            cpu_ticks: cpu_ticks(&stat).ok_or_else(|| bad("unreadable /proc/<pid>/stat"))?,
            rss_bytes: field(&status, "VmRSS:")
                .ok_or_else(|| bad("no VmRSS in /proc/<pid>/status"))?
                * 1024,
            context_switches,
            threads: field(&status, "Threads:").unwrap_or(0),
        })
    }
}

/// utime (field 14) + stime (field 15); fields are counted after the command name, which
/// is in parentheses and may itself hold spaces.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is f[n - 3].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The number after `name` in a `/proc/<pid>/status` text (kB for sizes).
fn field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU time spent between two readings.
pub(crate) fn cpu_between(before: &ProcSample, after: &ProcSample) -> Duration {
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks);
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// This thread's CPU time so far, in nanoseconds (`/proc/thread-self/schedstat`, far finer
/// than clock ticks).
pub(crate) fn thread_cpu_nanos() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 100 1000 50";
        assert_eq!(cpu_ticks(stat), Some(12));
    }

    #[test]
    fn this_process_can_be_read() {
        let s = ProcSample::read(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(thread_cpu_nanos().is_some());
    }
}
