//! Names and units given to `cafe cluster register`, checked before anything is written.

use super::ClusterError;

/// `DataCenter=DCA` -> (`DataCenter`, `DCA`), checking that both make a valid label
/// `unit.apps.cafe.io/DataCenter=DCA`.
pub fn parse_unit(given: &str) -> Result<(String, String), ClusterError> {
    let bad = |reason: &str| ClusterError::Unit {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let (unit_type, value) = given.split_once('=').ok_or_else(|| bad("missing '='"))?;
    let (unit_type, value) = (unit_type.trim(), value.trim());
    if unit_type.is_empty() {
        return Err(bad("the unit type before '=' is empty"));
    }
    if value.is_empty() {
        return Err(bad("the unit value after '=' is empty"));
    }
    // Label name and value syntax:
    // https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set
    if !is_label_token(unit_type) {
        return Err(bad(
            "the unit type must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ));
    }
    if !is_label_token(value) {
        return Err(bad(
            "the unit value must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ));
    }
    Ok((unit_type.to_string(), value.to_string()))
}

/// Every `--unit`, each type at most once.
pub fn parse_units(given: &[String]) -> Result<Vec<(String, String)>, ClusterError> {
    let units = given
        .iter()
        .map(|g| parse_unit(g))
        .collect::<Result<Vec<_>, _>>()?;
    check_units(&units)?;
    Ok(units)
}

pub(super) fn check_units(units: &[(String, String)]) -> Result<(), ClusterError> {
    if units.is_empty() {
        return Err(ClusterError::NoUnits);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (t, v) in units {
        parse_unit(&format!("{t}={v}"))?;
        if !seen.insert(t.as_str()) {
            return Err(ClusterError::Unit {
                given: format!("{t}={v}"),
                reason: format!("unit type {t} is given more than once"),
            });
        }
    }
    Ok(())
}

fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// MemberCluster names are DNS labels short enough that `<name>-kubeconfig` is one too.
pub(super) fn check_name(name: &str) -> Result<(), ClusterError> {
    if cafe_base::is_dns_label(name) && name.len() <= 50 {
        Ok(())
    } else {
        Err(ClusterError::Name(name.to_string()))
    }
}

pub(super) fn render_units(units: &[(String, String)]) -> String {
    units
        .iter()
        .map(|(t, v)| format!("{t}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_bad_ones_say_how_to_fix() {
        assert_eq!(
            parse_unit("DataCenter=DCA").unwrap(),
            ("DataCenter".to_string(), "DCA".to_string())
        );
        for bad in [
            "DataCenter",
            "=DCA",
            "DataCenter=",
            "Data Center=DCA",
            "DataCenter=DC/A",
            "a=-b",
        ] {
            let err = parse_unit(bad).unwrap_err().to_string();
            assert!(err.contains("TYPE=VALUE"), "{bad}: {err}");
            assert_eq!(err.lines().count(), 1);
        }
        let err = parse_units(&["DataCenter=DCA".into(), "DataCenter=DCB".into()]).unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        assert!(matches!(parse_units(&[]), Err(ClusterError::NoUnits)));
    }
}
