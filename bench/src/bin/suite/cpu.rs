//! CPU time spent on a workload, so that rates can be given per CPU-second.
//!
//! The machines are shared: another tenant's build on the generator's CPU
//! lowers the wall-clock rate of whatever is measured at that moment, by
//! any amount. The CPU time the workload itself got does not depend on
//! that. Everything the lab does per packet runs in the context of the
//! tasks that send (softirq processing on the way out of a veth runs inline)
//! or in ksoftirqd. Without IRQ time accounting the kernel charges softirq
//! time to the task it interrupts, so those tasks' run time is the
//! workload's CPU time; with it, the CPUs' softirq time is added.
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// CONFIG_IRQ_TIME_ACCOUNTING of the running kernel, when its config is
/// readable (read once).
pub fn irq_time_accounting() -> Option<bool> {
    static ONCE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ONCE.get_or_init(read_irq_time_accounting)
}

fn read_irq_time_accounting() -> Option<bool> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = match fs::read(format!("/boot/config-{}", release.trim())) {
        Ok(c) => String::from_utf8_lossy(&c).into_owned(),
        Err(_) => {
            // /proc/config.gz is gzip, which we do not link; zcat reads it.
            let out = std::process::Command::new("zcat")
                .arg("/proc/config.gz")
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    Some(config.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}

/// Tasks whose run time (ns, /proc/…/schedstat) is summed, plus, where the
/// kernel accounts it apart, the softirq and irq time of some CPUs.
pub struct Meter {
    tasks: Vec<PathBuf>,
    irq_cpus: Vec<usize>,
}

impl Meter {
    pub fn new() -> Meter {
        Meter {
            tasks: Vec::new(),
            irq_cpus: Vec::new(),
        }
    }

    /// Every thread of process `pid`.
    pub fn process(mut self, pid: u32) -> Meter {
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            self.tasks
                .extend(tasks.flatten().map(|t| t.path().join("schedstat")));
        }
        self
    }

    /// Thread `tid` of this process.
    pub fn thread(mut self, tid: i32) -> Meter {
        self.tasks
            .push(PathBuf::from(format!("/proc/self/task/{tid}/schedstat")));
        self
    }

    /// The softirq work of each CPU in `cpus`: its ksoftirqd, and with IRQ
    /// time accounting its softirq and irq time.
    /// Unknown accounting counts as on: adding tick-sampled softirq time
    /// errs on the side of more CPU time, never less.
    pub fn softirq(mut self, cpus: &[usize]) -> Result<Meter> {
        if irq_time_accounting() != Some(false) {
            self.irq_cpus.extend_from_slice(cpus);
        }
        for cpu in cpus {
            let name = format!("ksoftirqd/{cpu}");
            let pid = fs::read_dir("/proc")?
                .flatten()
                .find(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
                .with_context(|| format!("no {name}"))?
                .file_name();
            self.tasks
                .push(PathBuf::from("/proc").join(pid).join("schedstat"));
        }
        Ok(self)
    }

    /// Nanoseconds of CPU time so far; tasks that are gone count as 0.
    pub fn read(&self) -> u64 {
        let tasks: u64 = self
            .tasks
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        tasks + self.irq_ns()
    }

    /// irq + softirq columns of /proc/stat for our CPUs, in ns.
    fn irq_ns(&self) -> u64 {
        self.irq_cpus
            .iter()
            .filter_map(|&cpu| stat_ns(cpu, &[5, 6]))
            .sum()
    }
}

/// The sum of some columns of `cpuN` in /proc/stat (user nice system idle
/// iowait irq softirq steal ...), in ns; tick granularity.
fn stat_ns(cpu: usize, columns: &[usize]) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks: u64 = columns.iter().filter_map(|&c| f.get(c)).sum();
    Some(ticks * 1_000_000_000 / hz)
}

/// ns that `cpu` was busy (or its time stolen by the hypervisor) so far.
pub fn busy_ns(cpu: usize) -> u64 {
    stat_ns(cpu, &[0, 1, 2, 5, 6, 7]).unwrap_or(0)
}

/// The CPUs task `pid` may run on (its Cpus_allowed_list).
pub fn allowed_cpus(pid: u32) -> Result<Vec<usize>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list")?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`; threads it starts inherit that.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it for any
    // cpu below CPU_SETSIZE, which sched_setaffinity then checks.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            anyhow::bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
