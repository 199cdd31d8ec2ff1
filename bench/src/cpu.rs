//! CPU time of a process from `/proc/PID/stat`.

use anyhow::{bail, Context, Result};
use std::path::Path;

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

/// `utime + stime`, with `children` also `cutime + cstime` (fields 16 and 17: the time of
/// its children it has reaped), of a `/proc/PID/stat` file, in clock ticks.
pub fn stat_ticks(path: &Path, children: bool) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let own = parse_stat_ticks(&text)?;
    if !children {
        return Ok(own);
    }
    let rest = &text[text.rfind(')').map_or(0, |at| at + 1)..];
    // Fields 16 and 17 (cutime, cstime) are the 14th and 15th after the `)`.
    let reaped: u64 = rest
        .split_ascii_whitespace()
        .skip(13)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Ok(own + reaped)
}

/// Clock ticks of a postmaster, its reaped children and its children running now.
pub fn server_ticks(postmaster: u32) -> Result<u64> {
    let proc = Path::new("/proc");
    let mut ticks = stat_ticks(&proc.join(postmaster.to_string()).join("stat"), true)?;
    let parent = postmaster.to_string();
    for entry in std::fs::read_dir(proc).context("listing /proc")?.flatten() {
        let stat = entry.path().join("stat");
        // Field 4 (the parent's pid) comes second after the command name's closing `)`.
        let child = std::fs::read_to_string(&stat).is_ok_and(|t| {
            t.rfind(')')
                .and_then(|at| t[at + 1..].split_ascii_whitespace().nth(1))
                == Some(parent.as_str())
        });
        if child {
            // A backend that exited since the listing is in the postmaster's reaped time.
            ticks += stat_ticks(&stat, false).unwrap_or(0);
        }
    }
    Ok(ticks)
}

/// The postmaster's pid: the first line of `postmaster.pid` in its data directory.
pub fn postmaster_pid(datadir: &Path) -> Result<u32> {
    let path = datadir.join("postmaster.pid");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no pid in {}", path.display()))
}

/// CPU microseconds (user + system) of `getrusage(who)`: `RUSAGE_SELF` or
/// `RUSAGE_CHILDREN` (the reaped children: pgbench runs). 0 when the call fails.
pub fn rusage_us(who: libc::c_int) -> u64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0;
    }
    let t = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Busy clock ticks of all CPUs since boot, from the `cpu` line of `/proc/stat`: (user +
/// nice + system + steal, irq + softirq). Idle and iowait are not busy; guest time is part
/// of user; interrupt time (loopback networking, mostly) is charged to no process.
pub fn machine_busy_ticks() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok((at(0) + at(1) + at(2) + at(7), at(5) + at(6)))
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
