//! String `format`s that CRD schemas may use. The apiserver strips every
//! other format from CRD schemas, so unknown ones are not checked; the
//! checks here are deliberately light versions of go-openapi/strfmt's.

use std::net::{Ipv4Addr, Ipv6Addr};

/// `Some(valid)` for a checked format, `None` when the format is not checked.
pub(crate) fn check(format: &str, s: &str) -> Option<bool> {
    let hex = |c: char| c.is_ascii_hexdigit();
    Some(match format {
        "" | "password" => return None,
        "date-time" | "datetime" => is_date_time(s),
        "date" => s.len() == 10 && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "uuid" => uuid(s).is_some(),
        "uuid3" | "uuid4" | "uuid5" => uuid(s).is_some_and(|v| format.ends_with(v)),
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "cidr" => is_cidr(s),
        "mac" => {
            let groups: Vec<&str> = s.split([':', '-']).collect();
            matches!(groups.len(), 6 | 8 | 20)
                && groups.iter().all(|g| g.len() == 2 && g.chars().all(hex))
        }
        "hostname" => is_hostname(s),
        "email" => s.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !d.contains('@') && !s.contains(char::is_whitespace)
        }),
        "uri" => is_uri(s),
        "byte" => is_base64(s),
        "duration" => is_duration(s),
        "hexcolor" => {
            let h = s.strip_prefix('#').unwrap_or(s);
            matches!(h.len(), 3 | 6) && h.chars().all(hex)
        }
        "bsonobjectid" => s.len() == 24 && s.chars().all(hex),
        "k8s-short-name" => is_dns1123_label(s),
        "k8s-long-name" => s.len() <= 253 && s.split('.').all(is_dns1123_label),
        _ => return None,
    })
}

fn is_date_time(s: &str) -> bool {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return true;
    }
    // strfmt also accepts local times and minute precision.
    let local = s.strip_suffix('Z').unwrap_or(s);
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(local, f).is_ok())
}

/// The UUID version digit, when `s` is a UUID.
fn uuid(s: &str) -> Option<char> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let ok = lens == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| groups[2].chars().next()).flatten()
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    (ip.parse::<Ipv4Addr>().is_ok() && bits <= 32)
        || (ip.parse::<Ipv6Addr>().is_ok() && bits <= 128)
}

fn is_hostname(s: &str) -> bool {
    s.len() <= 255
        && !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

fn is_uri(s: &str) -> bool {
    if s.starts_with('/') {
        return !s.contains(char::is_whitespace);
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        && !rest.is_empty()
        && !s.contains(char::is_whitespace)
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
}

/// strfmt durations: Go durations plus days and weeks (`1d`, `2w`).
fn is_duration(s: &str) -> bool {
    if crate::cel_rules::parse_go_duration(s).is_some() {
        return true;
    }
    let mut rest = s.trim();
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let after = rest[digits..].trim_start();
        let unit = after
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after.len());
        let known = ["ns", "us", "µs", "ms", "s", "m", "h", "d", "w"];
        if digits == 0 || !known.contains(&&after[..unit]) {
            return false;
        }
        rest = after[unit..].trim_start();
        parts += 1;
    }
    parts > 0
}

/// RFC 1123 label: lower-case alphanumerics and '-', alphanumeric at both
/// ends, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && label_shape(s)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, whatever the length.
pub(crate) fn label_shape(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.chars().next().is_some_and(ok_char)
        && s.chars().last().is_some_and(ok_char)
        && s.chars().all(|c| ok_char(c) || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        for (f, good, bad) in [
            (
                "date-time",
                "2024-05-01T10:00:00.5+02:00",
                "2024-13-01T10:00:00Z",
            ),
            ("date", "2024-02-29", "2023-02-29"),
            (
                "uuid",
                "123e4567-e89b-12d3-a456-426614174000",
                "123e4567e89b",
            ),
            (
                "uuid4",
                "123e4567-e89b-42d3-a456-426614174000",
                "123e4567-e89b-12d3-a456-426614174000",
            ),
            ("ipv4", "10.0.0.1", "10.0.0.256"),
            ("ipv6", "::1", "::g"),
            ("cidr", "10.0.0.0/8", "10.0.0.0/33"),
            ("mac", "aa:bb:cc:dd:ee:ff", "aa:bb:cc"),
            ("hostname", "my-host.example.com", "-bad-.com"),
            ("email", "a@b.c", "nobody"),
            ("uri", "https://example.com/x", "not a uri"),
            ("byte", "aGVsbG8=", "aGVsbG8"),
            ("duration", "1h30m", "soon"),
            ("hexcolor", "#ffaa00", "#ffaa0"),
            ("k8s-short-name", "my-name", "My-Name"),
        ] {
            assert_eq!(check(f, good), Some(true), "{f} {good}");
            assert_eq!(check(f, bad), Some(false), "{f} {bad}");
        }
        assert_eq!(check("duration", "3d"), Some(true));
        assert_eq!(check("isbn", "whatever"), None);
    }
}
