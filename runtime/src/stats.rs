//! Process statistics for the CLI's stats line.

/// Peak resident set size (VmHWM) in bytes, where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak (VmHWM) to the current RSS, so the next [`peak_rss_bytes`] reports
/// the peak of what follows (Linux `clear_refs` 5; elsewhere a no-op). Returns whether
/// it was reset.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
