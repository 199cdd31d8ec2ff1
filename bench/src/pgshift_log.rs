//! Reading pgshift's log: the instants at which a switch swapped the routing table.

use crate::clock::Span;

/// One `swapped to SIDE, epoch N: pause P ms (...)` line of pgshift's log.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapEvent {
    /// When it was logged (the end of the pause), microseconds since the epoch.
    pub at_us: i64,
    /// The side traffic went to.
    pub to: String,
    /// The new routing epoch.
    pub epoch: u64,
    /// The pause it reports.
    pub pause_ms: f64,
}

impl SwapEvent {
    /// The server-side pause: `[at - pause, at]`.
    pub fn pause_span(&self) -> Span {
        Span {
            start_us: self.at_us - (self.pause_ms * 1000.0).round() as i64,
            end_us: self.at_us,
        }
    }
}

/// All swap events of a log (tracing's default format, with or without ANSI colours).
pub fn swaps(log: &str) -> Vec<SwapEvent> {
    log.lines()
        .filter_map(|line| parse_swap(&strip_ansi(line)))
        .collect()
}

fn parse_swap(line: &str) -> Option<SwapEvent> {
    let at = line.find("swapped to ")?;
    let at_us = parse_rfc3339_utc(line.split_whitespace().next()?)?;
    let rest = &line[at + "swapped to ".len()..];
    let (to, rest) = rest.split_once(", epoch ")?;
    let (epoch, rest) = rest.split_once(": pause ")?;
    let pause: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    Some(SwapEvent {
        at_us,
        to: to.to_string(),
        epoch: epoch.trim().parse().ok()?,
        pause_ms: pause.parse().ok()?,
    })
}

/// The line without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-21T15:49:27.628189Z` → microseconds since the epoch (UTC `Z` only).
fn parse_rfc3339_utc(ts: &str) -> Option<i64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let frac_digits: String = frac.chars().take(6).collect();
    let micros = frac_digits.parse::<i64>().ok()? * 10i64.pow(6 - frac_digits.len() as u32);
    let days = days_from_civil(y, m, day);
    Some(((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000_000) + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000)
        );
        assert_eq!(parse_rfc3339_utc("2026-11-21T15:49:27"), None);
    }

    #[test]
    fn finds_swaps_in_a_coloured_log() {
        let log = "\u{1b}[2m2026-11-21T15:49:27.628189Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mcontrol::controller\u{1b}[0m\u{1b}[2m:\u{1b}[0m swapped to target, epoch 2: pause 55.2 ms (drain 2.1, catch-up 43.1 ms)\n\
                   2026-11-21T15:49:28.000000Z  INFO pgshift: something else\n\
                   2026-11-21T15:49:43.013908Z  INFO control::controller: swapped to source, epoch 3: pause 41.5 ms (x)\n";
        let s = swaps(log);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].to, "target");
        assert_eq!(s[0].epoch, 2);
        assert_eq!(s[0].pause_ms, 55.2);
        assert_eq!(s[1].at_us - s[0].at_us, 15_385_719);
        assert_eq!(
            s[0].pause_span().end_us - s[0].pause_span().start_us,
            55_200
        );
    }
}
