//! Cross-cutting parts of every command: logging, kubeconfigs, shutdown, ControllerRevisions,
//! Events, and the wording of API errors; and the runtime of the long-running commands (`cafe
//! hub`, `cafe member`): their shared flags ([`args`]), admin server ([`admin`]), metrics
//! ([`metrics`]) and readiness ([`readiness`]), tied together by [`serve`].

pub mod admin;
pub mod args;
pub mod backoff;
pub mod controller_revision;
pub mod events;
pub mod kubeconfig;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod readiness;
mod serve;
pub mod shutdown;
pub mod status_patch;

use std::sync::Arc;

pub use serve::serve;

/// What a controller reports to the admin server: its metrics and the readiness of its watches.
/// Cheap to clone (shared). The default is a fresh, private one (tests that do not scrape).
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    pub metrics: Arc<metrics::Metrics>,
    pub readiness: readiness::Readiness,
}

/// Names this process in every request it sends through `config` (`User-Agent: cafe-<component>/<version>
/// (<identity>)`), so that the API server's audit log, and the simulator's call record, tell
/// the replicas of one ServiceAccount apart. An identity no header can carry leaves kube's
/// default in place.
pub fn identify(config: &mut kube::Config, component: &str, identity: &str) {
    let agent = format!(
        "cafe-{component}/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    );
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config
            .headers
            .retain(|(name, _)| name != http::header::USER_AGENT);
        config.headers.push((http::header::USER_AGENT, value));
    }
}

/// The API server's own words for a failed request (its Status message), else the error's
/// text: the Status message says what was refused and why, where the error's own text wraps it
/// in details of the transport.
pub fn api_cause(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn identify_names_component_version_and_identity_in_the_user_agent() {
        let mut config = kube::Config::new("https://example.invalid".parse().unwrap());
        identify(&mut config, "hub", "cafe-hub-7d9f-abcde");
        identify(&mut config, "hub", "cafe-hub-7d9f-xyz");
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(name, _)| name == http::header::USER_AGENT)
            .map(|(_, value)| value.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            agents,
            [format!(
                "cafe-hub/{} (cafe-hub-7d9f-xyz)",
                env!("CARGO_PKG_VERSION")
            )]
        );
        identify(&mut config, "hub", "bad\nname");
        assert_eq!(
            config.headers.len(),
            1,
            "a header-breaking identity is not sent"
        );
    }

    #[test]
    fn api_cause_prefers_the_servers_message() {
        let refused = kube::Error::Api(
            Status::failure("controllerrevisions \"x\" already exists", "AlreadyExists")
                .with_code(409)
                .boxed(),
        );
        assert_eq!(
            api_cause(&refused),
            "controllerrevisions \"x\" already exists"
        );

        let silent = kube::Error::Api(Status::failure("", "InternalError").with_code(500).boxed());
        assert_eq!(api_cause(&silent), silent.to_string());

        let other = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(api_cause(&other), other.to_string());
    }
}
