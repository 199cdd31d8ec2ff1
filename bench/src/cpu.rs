//! CPU time of a process from `/proc/PID/stat`.

use anyhow::{bail, Context, Result};

/// User plus system CPU time of process `pid` (all its threads), in microseconds.
pub fn process_cpu_us(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_ticks(&text).with_context(|| format!("parsing {path}"))?;
    Ok(ticks * 1_000_000 / clock_ticks_per_second()?)
}

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses itself, so the fields
/// are counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let Some(close) = stat.rfind(')') else {
        bail!("no ')' in {stat:?}");
    };
    // After ")": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let fields: Vec<&str> = stat[close + 1..].split_ascii_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("field {} missing", i + 3))?
            .parse::<u64>()
            .with_context(|| format!("field {} is not a number", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `utime` and `stime`.
pub fn clock_ticks_per_second() -> Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t <= 0 {
        bail!("sysconf(_SC_CLK_TCK) returned {t}");
    }
    Ok(t as u64)
}

/// CPU time a process spends over an interval: [`start`](Self::start) before, [`stop`](Self::stop) after.
pub struct CpuMeter {
    pid: u32,
    start_us: u64,
}

impl CpuMeter {
    /// Read the process's CPU time now.
    pub fn start(pid: u32) -> Result<CpuMeter> {
        Ok(CpuMeter {
            pid,
            start_us: process_cpu_us(pid)?,
        })
    }

    /// CPU microseconds used since [`start`](Self::start).
    pub fn stop(&self) -> Result<u64> {
        Ok(process_cpu_us(self.pid)?.saturating_sub(self.start_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 325);
        assert!(parse_stat_ticks("1234 (x) S 1").is_err());
    }

    #[test]
    fn reads_our_own_cpu_time() {
        let pid = std::process::id();
        let mut x = 0u64;
        let m = CpuMeter::start(pid).unwrap();
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let _ = m.stop().unwrap();
        assert!(clock_ticks_per_second().unwrap() > 0);
    }
}
