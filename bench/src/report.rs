//! Output: timestamped progress lines on standard error, plain-text tables and the closing
//! JSON line on standard output.

use std::sync::OnceLock;
use std::time::Instant;

fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Start the progress clock (the first call of [`say`] does it otherwise).
pub fn start_clock() {
    started();
}

/// Seconds since the progress clock started.
pub fn elapsed_s() -> f64 {
    started().elapsed().as_secs_f64()
}

/// A progress line on standard error: `[+  12.3s] message`.
pub fn say(message: impl AsRef<str>) {
    let t = elapsed_s();
    for (i, line) in message.as_ref().lines().enumerate() {
        if i == 0 {
            eprintln!("[+{t:>6.1}s] {line}");
        } else {
            eprintln!("           {line}");
        }
    }
}

/// A plain-text table with right-aligned columns (the first one left-aligned).
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are left empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, with a rule under the headers.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let cell = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
        let widths: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &Vec<String>| {
            (0..n)
                .map(|i| {
                    if i == 0 {
                        format!("{:<w$}", cell(cells, i), w = widths[i])
                    } else {
                        format!("{:>w$}", cell(cells, i), w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * n.saturating_sub(1)));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

/// A number with `digits` decimals.
pub fn num(v: f64, digits: usize) -> String {
    format!("{v:.digits$}")
}

/// A number rounded to `digits` decimals as JSON.
pub fn json_num(v: f64, digits: i32) -> serde_json::Value {
    let f = 10f64.powi(digits);
    serde_json::json!((v * f).round() / f)
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned() {
        let mut t = Table::new(&["what", "value"]);
        t.row(vec!["tps".into(), "1234.5".into()]);
        t.row(vec!["p99_ms".into(), "7.1".into()]);
        let s = t.render();
        assert_eq!(
            s,
            "what     value\n--------------\ntps     1234.5\np99_ms     7.1\n"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(json_num(1.23456, 2), serde_json::json!(1.23));
    }
}
