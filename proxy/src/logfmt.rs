//! Log formatting: span fields that are recorded again replace their earlier values.

/// Text formatting of fields as tracing-subscriber's default (`key=value`, space-separated),
/// except that a span field recorded again replaces its earlier value instead of being
/// appended: the control plane's `upgrade{id, phase}` span is recorded with every phase
/// change, and its prefix must show the phase in force, once. (The JSON formatter already
/// replaces.)
pub struct LatestFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for LatestFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        tracing_subscriber::fmt::format::DefaultFields::new().format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut new = String::new();
        tracing_subscriber::fmt::format::DefaultFields::new().format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut new),
            fields,
        )?;
        current.fields = merge_fields(&current.fields, &new);
        Ok(())
    }
}

/// `key=value` pairs of `old` with those of `new` replacing the same keys (new keys last).
fn merge_fields(old: &str, new: &str) -> String {
    let mut pairs = split_fields(old);
    for (k, v) in split_fields(new) {
        match pairs.iter_mut().find(|(pk, _)| *pk == k) {
            Some(p) => p.1 = v,
            None => pairs.push((k, v)),
        }
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits `a=1 b="x y" c=z` at the spaces outside double quotes; a piece without `=` belongs
/// to the previous value.
fn split_fields(s: &str) -> Vec<(String, String)> {
    let mut pieces = Vec::new();
    let (mut cur, mut quoted, mut escaped) = (String::new(), false, false);
    for ch in s.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                pieces.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    pieces.push(cur);
    let mut out: Vec<(String, String)> = Vec::new();
    for p in pieces.into_iter().filter(|p| !p.is_empty()) {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains('"') => out.push((k.into(), v.into())),
            _ => match out.last_mut() {
                Some(last) => {
                    last.1.push(' ');
                    last.1.push_str(&p);
                }
                None => out.push((p, String::new())),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge_fields;

    #[test]
    fn recorded_span_fields_replace_earlier_values() {
        assert_eq!(
            merge_fields("id=0 phase=\"idle\"", "id=1"),
            "id=1 phase=\"idle\""
        );
        assert_eq!(
            merge_fields("id=1 phase=\"idle\"", "phase=\"cutting over\""),
            "id=1 phase=\"cutting over\""
        );
        assert_eq!(merge_fields("", "step=cutover"), "step=cutover");
        assert_eq!(
            merge_fields("msg=\"a \\\" b\" x=1", "x=2 y=3"),
            "msg=\"a \\\" b\" x=2 y=3"
        );
    }
}
