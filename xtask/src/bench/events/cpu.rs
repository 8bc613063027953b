//! Where the CPU goes during a phase of `bench-events`: per-thread time on a core from
//! `/proc/self/task/*/schedstat` (nanoseconds), grouped by thread name, next to what the
//! whole machine used (`/proc/stat`), so other work on the machine shows.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::Cpu;
use super::node::TOKIO_THREAD;

/// The embedded journal's writer thread (`tessera-events-writer`, cut to 15 characters by
/// the kernel).
const WRITER_THREAD: &str = "tessera-events";

/// The threads of a cluster node's NATS client (`tessera-nats`): the client, the JetStream
/// journal's calls and the cluster's background tasks.
const NATS_CLIENT_THREAD: &str = "tessera-nats";

/// `/proc/stat` counts in USER_HZ, which Linux fixes at 100 per second for user space.
const NS_PER_TICK: u64 = 10_000_000;

/// One thread's time on a core, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadTimes {
    pub run_ns: u64,
}

impl ThreadTimes {
    pub fn since(self, before: ThreadTimes) -> ThreadTimes {
        ThreadTimes {
            run_ns: self.run_ns.saturating_sub(before.run_ns),
        }
    }
}

/// Every live thread of this process (thread id → name, counters), and the busy time of
/// all the machine's cores.
pub struct CpuSnapshot {
    threads: HashMap<u32, (String, ThreadTimes)>,
    machine_ns: u64,
    /// The NATS server's user and system time, when one is watched.
    server_ns: u64,
}

/// A process's user and system time, from `/proc/PID/stat`.
pub fn process_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_stat(&stat)
}

fn parse_process_stat(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * NS_PER_TICK)
}

pub fn snapshot() -> Result<CpuSnapshot> {
    let mut threads = HashMap::new();
    let tasks = Path::new("/proc/self/task");
    for entry in std::fs::read_dir(tasks).context("listing /proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between listing and reading; it is simply not counted.
        let (Ok(name), Ok(schedstat)) = (
            std::fs::read_to_string(entry.path().join("comm")),
            std::fs::read_to_string(entry.path().join("schedstat")),
        ) else {
            continue;
        };
        if let Some(times) = parse_schedstat(&schedstat) {
            threads.insert(tid, (name.trim().to_owned(), times));
        }
    }
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let machine_ns = parse_machine_busy(&stat).context("no `cpu` line in /proc/stat")?;
    let server_ns = SERVER.get().and_then(|pid| process_ns(*pid)).unwrap_or(0);
    Ok(CpuSnapshot {
        threads,
        machine_ns,
        server_ns,
    })
}

/// The NATS server whose time snapshots include, if any.
static SERVER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Counts the NATS server process `pid` in every snapshot from now on.
pub fn watch_server(pid: u32) {
    let _ = SERVER.set(pid);
}

/// The calling thread's own counters (for threads that end before the phase does).
pub fn this_thread() -> ThreadTimes {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| parse_schedstat(&text))
        .unwrap_or_default()
}

/// `schedstat` is "run_ns wait_ns timeslices".
fn parse_schedstat(text: &str) -> Option<ThreadTimes> {
    Some(ThreadTimes {
        run_ns: text.split_whitespace().next()?.parse().ok()?,
    })
}

/// The busy time of all cores from the `cpu` line of `/proc/stat`: everything but idle and
/// iowait (user, nice, system, irq, softirq, steal; guest time is already in user).
fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq + steal) * NS_PER_TICK)
}

impl Cpu {
    /// Adds what the publisher threads used (they end before the phase does).
    pub fn with_publishers(mut self, publishers: ThreadTimes) -> Cpu {
        self.publishers_ns += publishers.run_ns;
        self
    }
}

impl CpuSnapshot {
    /// What the threads alive now used since `before`, by group. Threads that ended during
    /// the phase are not counted here; publishers report their own (see `this_thread`).
    pub fn since(&self, before: &CpuSnapshot) -> Cpu {
        let mut cpu = Cpu {
            machine_ns: self.machine_ns.saturating_sub(before.machine_ns),
            nats_server_ns: self.server_ns.saturating_sub(before.server_ns),
            ..Cpu::default()
        };
        for (tid, (name, now)) in &self.threads {
            let then = before
                .threads
                .get(tid)
                .filter(|(old, _)| old == name)
                .map(|(_, times)| *times)
                .unwrap_or_default();
            let used = now.since(then);
            let group = if name.starts_with(WRITER_THREAD) {
                &mut cpu.writer_ns
            } else if name == TOKIO_THREAD {
                &mut cpu.tokio_ns
            } else if name.starts_with(NATS_CLIENT_THREAD) {
                &mut cpu.nats_client_ns
            } else {
                &mut cpu.other_ns
            };
            *group += used.run_ns;
        }
        cpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(
            parse_schedstat("238253420 31353997 30\n"),
            Some(ThreadTimes {
                run_ns: 238_253_420
            })
        );
        assert_eq!(parse_schedstat(""), None);
        let stat = "cpu  685095 1 68014 191043 3191 2 1714 378 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(
            parse_machine_busy(stat),
            Some((685_095 + 1 + 68_014 + 2 + 1_714 + 378) * NS_PER_TICK)
        );
        assert_eq!(parse_machine_busy("cpu0 1 2 3\n"), None);
        assert_eq!(parse_machine_busy("cpu  1 2 3\n"), None);
        let process =
            "4242 (nats server) S 1 4242 4242 0 -1 4194560 1020 0 0 0 150 25 0 0 20 0 8 0";
        assert_eq!(parse_process_stat(process), Some(175 * NS_PER_TICK));
    }

    #[test]
    fn snapshots_group_threads_by_name() {
        let t = |run_ns| ThreadTimes { run_ns };
        let before = CpuSnapshot {
            threads: HashMap::from([
                (1, ("tessera-events-".to_owned(), t(100))),
                (2, (TOKIO_THREAD.to_owned(), t(50))),
            ]),
            machine_ns: 1_000,
            server_ns: 0,
        };
        let after = CpuSnapshot {
            threads: HashMap::from([
                (1, ("tessera-events-".to_owned(), t(400))),
                (2, (TOKIO_THREAD.to_owned(), t(250))),
                // Started during the phase: all of its time counts.
                (3, (TOKIO_THREAD.to_owned(), t(30))),
                (4, ("main".to_owned(), t(7))),
                (5, ("tessera-nats".to_owned(), t(11))),
            ]),
            machine_ns: 3_500,
            server_ns: 40,
        };
        let cpu = after.since(&before);
        assert_eq!(
            (cpu.writer_ns, cpu.tokio_ns, cpu.other_ns, cpu.machine_ns),
            (300, 230, 7, 2_500)
        );
        assert_eq!((cpu.nats_client_ns, cpu.nats_server_ns), (11, 40));
    }
}
