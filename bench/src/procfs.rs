//! What `/proc` says about a process: CPU time (the P1 metric), resident memory; and
//! CPU pinning of the calling thread.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` times.
#[allow(unsafe_code)]
pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of every thread of `pid`, in clock ticks (fields 14 and 15 of
/// `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&text).with_context(|| format!("parsing {path}: {text}"))
}

/// utime + stime of one thread `tid` of `pid`, in clock ticks.
pub fn thread_cpu_ticks(pid: u32, tid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&text).with_context(|| format!("parsing {path}: {text}"))
}

/// CPU time of one thread `tid` of `pid` in nanoseconds (`/proc/<pid>/task/<tid>/schedstat`).
pub fn thread_cpu_ns(pid: u32, tid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("parsing {path}: {text}"))
}

fn parse_stat_ticks(text: &str) -> Result<u64> {
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .context("no ')' in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let (Some(utime), Some(stime)) = (fields.get(14 - 3), fields.get(15 - 3)) else {
        bail!("too few fields");
    };
    Ok(utime.parse::<u64>()? + stime.parse::<u64>()?)
}

/// CPU time of every current thread of `pid` in nanoseconds, from
/// `/proc/<pid>/task/*/schedstat` (finer than ticks; threads that already exited are
/// missing, so use it only as a cross-check).
pub fn cpu_ns_schedstat(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS in {path}"))
}

fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Busy and total jiffies of one CPU from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuJiffies {
    pub busy: u64,
    pub total: u64,
}

impl CpuJiffies {
    /// Busy fraction between `earlier` and `self`.
    pub fn busy_since(self, earlier: CpuJiffies) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Jiffies of `cpu` (the `cpuN` line of `/proc/stat`).
pub fn cpu_jiffies(cpu: usize) -> Result<CpuJiffies> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_cpu_line(&text, cpu).with_context(|| format!("no cpu{cpu} line in /proc/stat"))
}

fn parse_cpu_line(text: &str, cpu: usize) -> Option<CpuJiffies> {
    let name = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some(CpuJiffies {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// The CPUs the calling thread may run on.
#[allow(unsafe_code)]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is within the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Restricts the calling thread (and the threads and processes it starts from now on) to
/// `cpus`, like `taskset -c`.
#[allow(unsafe_code)]
pub fn pin_current_thread(cpus: &[usize]) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu < libc::CPU_SETSIZE as usize {
            // SAFETY: `cpu` is within the set.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    // SAFETY: plain syscall on this thread with a valid set.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        bail!(
            "sched_setaffinity({cpus:?}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Sets the nice value of the calling thread (and of the threads and processes it starts
/// from now on). Negative values need root.
#[allow(unsafe_code)]
pub fn set_nice(nice: i32) -> Result<()> {
    // SAFETY: plain syscall; `who` 0 is the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        bail!("setpriority({nice}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Size of a file in bytes.
pub fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_a_command_with_spaces_and_parens() {
        let line = "1234 (envoy (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 200 300";
        assert_eq!(parse_stat_ticks(line).unwrap(), 300);
        assert!(parse_stat_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn vm_rss_in_bytes() {
        let text = "Name:\tenvoy\nVmRSS:\t   51200 kB\nThreads: 9\n";
        assert_eq!(parse_vm_rss(text), Some(51200 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn cpu_line_busy_fraction() {
        let a = "cpu  1 1 1 1\ncpu0 100 0 50 800 50 0 0 0 0 0\ncpu1 0 0 0 1000 0 0 0 0\n";
        let b = "cpu  1 1 1 1\ncpu0 200 0 100 850 50 0 0 0 0 0\ncpu1 0 0 0 1000 0 0 0 0\n";
        let (a, b) = (parse_cpu_line(a, 0).unwrap(), parse_cpu_line(b, 0).unwrap());
        assert!((b.busy_since(a) - 0.75).abs() < 1e-9);
        assert_eq!(parse_cpu_line("cpu0 1 2\n", 1), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_ticks(me).is_ok());
        assert!(cpu_ns_schedstat(me).unwrap() > 0);
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(!allowed_cpus().is_empty());
    }
}
