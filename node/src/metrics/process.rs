//! The standard `process_` metrics (as every Prometheus client library exports them), read
//! from Linux's `/proc/self` at each scrape. Elsewhere (no `/proc`) they are left out.

use std::fmt::Write as _;

/// Name, type and help of each process metric, in the order they are written.
pub const DESCRIPTORS: &[(&str, &str, &str)] = &[
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    ),
];

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

/// Parses `/proc/self/stat` (fields after the command name, which may hold spaces), with the
/// clock tick rate, page size and boot time (`btime` of `/proc/stat`) it needs.
fn parse_stat(stat: &str, ticks: f64, page: u64, boot: u64) -> Option<ProcessStats> {
    // Fields 3.. follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field k is f[k - 3].
    let field = |k: usize| f.get(k - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        ..ProcessStats::default()
    })
}

/// The soft "Max open files" limit of `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Reads this process's figures; `None` without `/proc`.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok()))
        .unwrap_or(0);
    let mut stats = parse_stat(&stat, ticks.max(1) as f64, page.max(1) as u64, boot)?;
    stats.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    stats.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| parse_max_fds(&l))
        .unwrap_or(0);
    Some(stats)
}

/// Writes the process metrics in the Prometheus text format.
pub fn encode(out: &mut String) -> std::fmt::Result {
    let Some(p) = read() else { return Ok(()) };
    let values = [
        p.cpu_seconds,
        p.resident_bytes as f64,
        p.virtual_bytes as f64,
        p.open_fds as f64,
        p.max_fds as f64,
        p.start_time_seconds,
    ];
    for ((name, kind, help), value) in DESCRIPTORS.iter().zip(values) {
        writeln!(out, "# HELP {name} {help}")?;
        writeln!(out, "# TYPE {name} {kind}")?;
        writeln!(out, "{name} {value}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and parentheses, as the kernel writes it.
        let stat = "42 (dynamo (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 \
                    1000 123456789 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let p = parse_stat(stat, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(p.virtual_bytes, 123456789);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert_eq!(parse_stat("garbage", 100.0, 4096, 0), None);
    }

    #[test]
    fn max_fds_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }

    #[test]
    fn this_process_has_open_files_and_memory() {
        let p = read().expect("/proc is mounted");
        assert!(p.open_fds >= 3, "{p:?}");
        assert!(p.resident_bytes > 0 && p.max_fds > 0, "{p:?}");
    }
}
