//! Where the brokers run: every broker process that `compare` measures against another (the
//! relay, nats-server) is pinned to the same CPU set with `taskset -c`, when `taskset` is
//! installed, and nats-server's `GOMAXPROCS` is the relay's tokio worker count, so that neither
//! gets more of the machine than the other.
//!
//! The set is the last [`BROKER_WORKERS`] CPUs this process may run on (all of them when it may
//! run on fewer): on a 2-core machine, both cores, which the load side shares.

use std::process::{Command, Stdio};

/// The relay's tokio worker threads, and nats-server's `GOMAXPROCS`.
pub const BROKER_WORKERS: usize = 2;

/// The CPU set the brokers are pinned to, or why they are not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerCpus {
    /// The CPUs, as `taskset -c` takes them (`0,1`); `None` when not pinned.
    list: Option<String>,
    /// Why not pinned, when not.
    why_not: &'static str,
}

impl BrokerCpus {
    /// The last [`BROKER_WORKERS`] CPUs this process may run on, when `taskset` is installed.
    pub fn detect() -> Self {
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !taskset {
            return Self::unpinned("taskset not found on PATH");
        }
        let allowed = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .and_then(|l| parse_cpu_list(l.trim()))
            });
        match allowed {
            Some(cpus) if !cpus.is_empty() => {
                let from = cpus.len().saturating_sub(BROKER_WORKERS);
                let list = cpus[from..]
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                Self {
                    list: Some(list),
                    why_not: "",
                }
            }
            _ => Self::unpinned("the CPUs allowed could not be read (/proc/self/status)"),
        }
    }

    /// Not pinned, for `reason`.
    pub fn unpinned(reason: &'static str) -> Self {
        Self {
            list: None,
            why_not: reason,
        }
    }

    /// The CPUs as `taskset -c` takes them, when pinned.
    pub fn list(&self) -> Option<&str> {
        self.list.as_deref()
    }

    /// A line for the output: which set, or why none.
    pub fn describe(&self) -> String {
        match &self.list {
            Some(list) => format!(
                "brokers pinned to CPUs {list} (taskset -c {list}); relay: {BROKER_WORKERS} tokio workers, nats-server: GOMAXPROCS={BROKER_WORKERS}"
            ),
            None => format!(
                "brokers not pinned ({}); relay: {BROKER_WORKERS} tokio workers, nats-server: GOMAXPROCS={BROKER_WORKERS}",
                self.why_not
            ),
        }
    }

    /// A command running `program` on these CPUs (`taskset -c LIST program`, which execs it: the
    /// child's process id is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.list {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// `0-2,5` as `[0, 1, 2, 5]`; `None` when it does not parse.
fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-4,7"), Some(vec![0, 2, 3, 4, 7]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn unpinned_runs_the_program_itself() {
        let c = BrokerCpus::unpinned("test").command("nats-server");
        assert_eq!(c.get_program(), "nats-server");
        let c = BrokerCpus {
            list: Some("0,1".into()),
            why_not: "",
        }
        .command("nats-server");
        assert_eq!(c.get_program(), "taskset");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["-c", "0,1", "nats-server"]);
    }
}
