//! cafe-base: the small pieces that both the `cafe` binary and its simulator `cafe-sim` need, so
//! that the production binary can be built without the simulator.
//!
//! - [`quantity`]: Kubernetes resource quantities ("500m", "16Gi").
//! - [`output`]: stdout through [`out!`] / [`outln!`], quiet on a closed pipe.
//! - [`signal`]: waiting for SIGINT or SIGTERM.
//! - [`is_dns_label`]: RFC 1123 label names (clusters, members).

// Output goes through `out!`/`outln!` (module `output`): `print!` panics on a closed pipe.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod output;
pub mod quantity;
pub mod signal;

/// An RFC 1123 label, as Kubernetes names namespaces and most objects: lowercase alphanumerics
/// and '-', 1 to 63 characters, starting and ending with an alphanumeric.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_lowercase_alphanumerics_and_inner_dashes() {
        assert!(is_dns_label("dca"));
        assert!(is_dns_label("dc-1"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("DCA"));
        assert!(!is_dns_label("-dca"));
        assert!(!is_dns_label("dca-"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
