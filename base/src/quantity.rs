//! Kubernetes resource quantities ("500m", "2", "16Gi", "1e3").
//!
//! Mirrors https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/ closely
//! enough for scheduling: CPU is counted in millicores, everything else in whole units (bytes).

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
#[error("quantity {0:?} is not a Kubernetes quantity (examples: 500m, 2, 16Gi, 1.5G)")]
pub struct QuantityError(pub String);

/// Parses a quantity into thousandths of a unit (so "250m" -> 250, "2" -> 2000, "1Ki" -> 1_024_000).
pub fn parse_milli(text: &str) -> Result<i128, QuantityError> {
    let bad = || QuantityError(text.to_string());
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    // Multiplier expressed in milli-units: numerator / denominator.
    let (num, den): (i128, i128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "u" => (1, 1000),
        "n" => (1, 1_000_000),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1_000_000, 1),
        "G" => (1000 * 1_000_000_000, 1),
        "T" => (1000 * 1_000_000_000_000, 1),
        "P" => (1000 * 1_000_000_000_000_000, 1),
        "E" => (1000 * 1_000_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        other => {
            // Decimal exponent form: 1e3, 2E6.
            let exp = other
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<u32>().ok())
                .filter(|e| *e <= 18)
                .ok_or_else(bad)?;
            (1000 * 10i128.pow(exp), 1)
        }
    };
    let negative = number.starts_with('-');
    let digits = number.trim_start_matches(['+', '-']);
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad());
    }
    let int: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| bad())?
    };
    let mut value = int.checked_mul(num).ok_or_else(bad)? / den;
    if !frac_part.is_empty() {
        let frac: i128 = frac_part.parse().map_err(|_| bad())?;
        let scale = 10i128
            .checked_pow(u32::try_from(frac_part.len()).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        // Round up like Kubernetes does when a quantity is finer than it can hold.
        let scaled = frac.checked_mul(num).ok_or_else(bad)?;
        value += (scaled + scale * den - 1) / (scale * den);
    }
    Ok(if negative { -value } else { value })
}

/// CPU in millicores.
pub fn cpu_millis(text: &str) -> Result<i128, QuantityError> {
    parse_milli(text)
}

/// Memory (or any count) in whole units, rounded up.
pub fn units(text: &str) -> Result<i128, QuantityError> {
    let milli = parse_milli(text)?;
    Ok((milli + 999).div_euclid(1000))
}

/// Reads a quantity from a JSON value (string or number).
pub fn json_milli(value: &serde_json::Value) -> Option<i128> {
    match value {
        serde_json::Value::String(s) => parse_milli(s).ok(),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(|v| i128::from(v) * 1000)
            .or_else(|| n.as_f64().map(|f| (f * 1000.0).ceil() as i128)),
        _ => None,
    }
}

/// Formats millicores the way `kubectl` shows them ("1500m", "8").
pub fn format_cpu(millis: i128) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest exact binary suffix ("16Gi", "1536Mi").
pub fn format_bytes(bytes: i128) -> String {
    for (suffix, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        let unit = 1i128 << shift;
        if bytes != 0 && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_memory() {
        assert_eq!(cpu_millis("250m"), Ok(250));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(units("16Gi"), Ok(16 << 30));
        assert_eq!(units("1G"), Ok(1_000_000_000));
        assert_eq!(units("1e3"), Ok(1000));
        assert_eq!(units("128974848"), Ok(128_974_848));
    }

    #[test]
    fn rejects_garbage() {
        assert!(cpu_millis("").is_err());
        assert!(cpu_millis("abc").is_err());
        assert!(cpu_millis("1Zi").is_err());
        assert!(cpu_millis("m").is_err());
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_cpu(8000), "8");
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_bytes(16 << 30), "16Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
    }
}
