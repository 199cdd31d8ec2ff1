//! Masking passwords inside libpq connection strings.

/// Returns `conninfo` with its password replaced by `***`, for logs and `Debug` output.
///
/// Handles both libpq forms (PostgreSQL docs, "Connection Strings"):
/// - key/value: `host=db password='s3cr et'` → `host=db password='***'`;
/// - URI: `postgresql://app:s3cret@db/x?password=y` → `postgresql://app:***@db/x?password=***`.
///
/// Everything else is kept as written. Malformed input is never echoed past the point where
/// a password could start: an unterminated quoted password value is masked to the end.
pub fn redact_conninfo(conninfo: &str) -> String {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        redact_uri(conninfo)
    } else {
        redact_key_value(conninfo)
    }
}

fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_string();
    };
    let (head, rest) = uri.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(uri.len());
    out.push_str(head);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, hosts) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(hosts);
        }
        None => out.push_str(authority),
    }
    // Query parameters: `?a=b&password=c#frag`.
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k == "password" => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(tail),
    }
    out
}

fn redact_key_value(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        // Whitespace between pairs.
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        // Key.
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        out.push_str(&key);
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] != '=' {
            // Not key=value; keep scanning from here as if a new pair started.
            continue;
        }
        out.push('=');
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        // Value: 'quoted with \' escapes' or bare with \ escapes, up to whitespace.
        let value_start = i;
        let quoted = i < chars.len() && chars[i] == '\'';
        if quoted {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = i.min(chars.len());
        }
        if key == "password" {
            out.push_str(if quoted { "'***'" } else { "***" });
        } else {
            out.extend(&chars[value_start..i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_conninfo;

    #[test]
    fn key_value() {
        assert_eq!(
            redact_conninfo("host='db' port=5432 password='s3 cr\\'et' user=app"),
            "host='db' port=5432 password='***' user=app"
        );
        assert_eq!(
            redact_conninfo("password = hunter2 host=x"),
            "password = *** host=x"
        );
        assert_eq!(
            redact_conninfo("host=x password='unterminated"),
            "host=x password='***'"
        );
        assert_eq!(redact_conninfo("host=x"), "host=x");
        assert_eq!(redact_conninfo(""), "");
    }

    #[test]
    fn uri() {
        assert_eq!(
            redact_conninfo("postgresql://app:s3cret@db:5432/x?sslmode=require&password=y#f"),
            "postgresql://app:***@db:5432/x?sslmode=require&password=***#f"
        );
        assert_eq!(
            redact_conninfo("postgres://app@db/x"),
            "postgres://app@db/x"
        );
        assert_eq!(redact_conninfo("postgres://db"), "postgres://db");
    }
}
