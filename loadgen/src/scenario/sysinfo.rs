//! Readings from the kernel: a process's RSS (`/proc/PID/status` VmRSS / VmHWM),
//! the kernel's Slab memory (`/proc/meminfo`), and this process's CPU time and that
//! of its waited-for children (getrusage).

/// A `Key:   123 kB` line of a /proc file, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')))?;
    let value = line.split_once(':')?.1.split_whitespace().next()?;
    value.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// VmRSS of `pid` in bytes.
pub fn process_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kb_field(&text, "VmRSS")
}

/// This process's VmRSS and VmHWM (peak) in bytes.
pub fn own_rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (kb_field(&text, "VmRSS").unwrap_or(0), kb_field(&text, "VmHWM").unwrap_or(0))
}

/// The kernel's Slab memory in bytes.
pub fn slab_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    kb_field(&text, "Slab")
}

/// CPU seconds (user + system) of this process, and of its waited-for children.
pub fn cpu_seconds() -> (f64, f64) {
    (rusage_cpu(libc::RUSAGE_SELF), rusage_cpu(libc::RUSAGE_CHILDREN))
}

fn rusage_cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes into the zero-initialised struct we pass, which
    // is a plain C struct valid for any bit pattern.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let text = "VmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nSlab:  77 kB\nSlabX: 1 kB\n";
        assert_eq!(kb_field(text, "VmRSS"), Some(1024 * 1024));
        assert_eq!(kb_field(text, "Slab"), Some(77 * 1024));
        assert_eq!(kb_field(text, "Missing"), None);
        assert!(process_rss(std::process::id()).unwrap() > 0);
        assert!(slab_bytes().unwrap() > 0);
        let (rss, hwm) = own_rss();
        assert!(rss > 0 && hwm >= rss);
        assert!(cpu_seconds().0 >= 0.0);
    }
}
