//! Memory figures for the benchmarks, from `/proc/self/status` (Linux).

/// A `/proc/self/status` field (`VmRSS:`, `VmHWM:`) in MiB; Linux reports kB.
pub fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Starts a new peak: Linux resets VmHWM to the current RSS when "5" is written to `clear_refs`.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
