//! The flags every long-running command (`cafe hub`, `cafe member`) shares: the admin server's
//! address, the process identity, the log format; and each controller's timing knobs, in human
//! durations (`10s`, `500ms`, `1m30s`), defaulting to [`HubOptions::default`] and
//! [`MemberOptions::default`].
//!
//! A bad value stops the command before anything runs, with clap's one-line cause naming the
//! flag (`error: invalid value 'nope' for '--admin-address <ADDR:PORT>': ...`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::hub::HubOptions;
use crate::member::MemberOptions;
use crate::runtime::leader::LeaseTimings;

/// Where the admin server listens; `off` runs none (tests that start many processes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminAddress(pub Option<SocketAddr>);

impl FromStr for AdminAddress {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "off" => Ok(AdminAddress(None)),
            addr => addr.parse().map(|a| AdminAddress(Some(a))).map_err(|_| {
                format!("{text:?} is not ADDR:PORT (e.g. 0.0.0.0:8080, 127.0.0.1:0) or `off`")
            }),
        }
    }
}

impl fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("off"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// The shared flags of `cafe hub` and `cafe member`.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Where the admin server (/healthz, /readyz, /metrics) listens, as ADDR:PORT; port 0 picks
    /// a free one (logged); `off` runs none.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8080")]
    pub admin_address: AdminAddress,
    /// This process's name among its replicas (leader election): default $POD_NAME, else
    /// <hostname>-<pid>.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,
    /// Log lines as text or as JSON objects (RUST_LOG sets the level).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Leader election: how long the other replicas wait, after the Lease last changed, before
    /// one of them takes it (kube-controller-manager's flag of the same name).
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(LeaseTimings::default().lease_duration))]
    pub leader_elect_lease_duration: HumanDuration,
    /// Leader election: how long the leader keeps trying to renew before it stops writing;
    /// shorter than the lease duration, so that it stops before another can take over.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(LeaseTimings::default().renew_deadline))]
    pub leader_elect_renew_deadline: HumanDuration,
    /// Leader election: how often the leader renews and the others try to acquire.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(LeaseTimings::default().retry_period))]
    pub leader_elect_retry_period: HumanDuration,
}

/// Leader-election timings that would let two replicas write at once.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--leader-elect-retry-period ({retry}) < --leader-elect-renew-deadline ({renew}) < \
     --leader-elect-lease-duration ({lease}) must hold: a leader has to stop writing before \
     another replica can take the Lease; lengthen the lease duration or shorten the others"
)]
pub struct LeaseTimingsError {
    retry: HumanDuration,
    renew: HumanDuration,
    lease: HumanDuration,
}

impl RuntimeArgs {
    /// `--identity`, else `$POD_NAME`, else `<hostname>-<pid>`: unique among the replicas of a
    /// Deployment (pod names) and among processes on one machine.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(crate::runtime::leader::default_identity)
    }

    /// The leader-election timings of the `--leader-elect-*` flags, refused when a leader
    /// could still be writing after another took over.
    pub fn lease(&self) -> Result<LeaseTimings, LeaseTimingsError> {
        let timings = LeaseTimings {
            lease_duration: self.leader_elect_lease_duration.0,
            renew_deadline: self.leader_elect_renew_deadline.0,
            retry_period: self.leader_elect_retry_period.0,
        };
        if timings.retry_period < timings.renew_deadline
            && timings.renew_deadline < timings.lease_duration
        {
            Ok(timings)
        } else {
            Err(LeaseTimingsError {
                retry: self.leader_elect_retry_period,
                renew: self.leader_elect_renew_deadline,
                lease: self.leader_elect_lease_duration,
            })
        }
    }
}

/// A positive duration as the timing flags take it, shown the same way in `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        // A bare number would be read as seconds where a reader may mean milliseconds.
        if text.trim().parse::<f64>().is_ok() {
            return Err(format!(
                "{text:?} has no unit; write e.g. {}s or {}ms",
                text.trim(),
                text.trim()
            ));
        }
        match crate::cli::rollout::follow::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(HumanDuration(d)),
            _ => Err(format!(
                "{text:?} is not a positive duration; use e.g. 500ms, 10s, 5m or 1h30m"
            )),
        }
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        let (h, m, s, ms) = (
            millis / 3_600_000,
            millis / 60_000 % 60,
            millis / 1000 % 60,
            millis % 1000,
        );
        let parts = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")];
        let mut wrote = false;
        for (n, unit) in parts {
            if n > 0 {
                write!(f, "{n}{unit}")?;
                wrote = true;
            }
        }
        if !wrote {
            f.write_str("0s")?;
        }
        Ok(())
    }
}

fn hub_default() -> HubOptions {
    HubOptions::default()
}

/// The hub's timing (see [`HubOptions`] for what each does).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Timing")]
pub struct HubTimingArgs {
    /// How often each member is probed.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().probe_interval))]
    pub probe_interval: HumanDuration,
    /// How long one probe may take before the member counts as unreachable.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().probe_timeout))]
    pub probe_timeout: HumanDuration,
    /// How long one write to a member may take before it is retried.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().request_timeout))]
    pub request_timeout: HumanDuration,
    /// MemberCluster status is rewritten at least this often (its heartbeat).
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().status_heartbeat))]
    pub status_heartbeat: HumanDuration,
    /// First delay after a failed reconcile (doubles up to --retry-max).
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().retry_min))]
    pub retry_min: HumanDuration,
    /// Longest delay between retries of a failing reconcile.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().retry_max))]
    pub retry_max: HumanDuration,
    /// How often the CafeDeployments of an unusable member are looked at again.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().member_wait))]
    pub member_wait: HumanDuration,
    /// Every CafeDeployment is reconciled at least this often.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().resync_interval))]
    pub resync_interval: HumanDuration,
    /// At start-up, how long to wait for every member to connect before acting.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(hub_default().startup_settle))]
    pub startup_settle: HumanDuration,
}

impl HubTimingArgs {
    /// The hub's options with this timing (everything else from `base`).
    pub fn options(&self, base: HubOptions) -> HubOptions {
        HubOptions {
            probe_interval: self.probe_interval.0,
            probe_timeout: self.probe_timeout.0,
            request_timeout: self.request_timeout.0,
            status_heartbeat: self.status_heartbeat.0,
            retry_min: self.retry_min.0,
            retry_max: self.retry_max.0,
            member_wait: self.member_wait.0,
            resync_interval: self.resync_interval.0,
            startup_settle: self.startup_settle.0,
            ..base
        }
    }
}

/// The member agent's timing (see [`MemberOptions`]).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Timing")]
pub struct MemberTimingArgs {
    /// How long a reconcile waits for the pod and ControllerRevision caches before it reports
    /// ReplicaFailure CacheNotSynced and retries.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(MemberOptions::default().cache_sync_timeout))]
    pub cache_sync_timeout: HumanDuration,
}

impl MemberTimingArgs {
    pub fn options(&self, base: MemberOptions) -> MemberOptions {
        MemberOptions {
            cache_sync_timeout: self.cache_sync_timeout.0,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_address_is_addr_port_or_off() {
        assert_eq!(
            "127.0.0.1:0".parse::<AdminAddress>(),
            Ok(AdminAddress(Some("127.0.0.1:0".parse().unwrap())))
        );
        assert_eq!("off".parse::<AdminAddress>(), Ok(AdminAddress(None)));
        let err = "nope".parse::<AdminAddress>().unwrap_err();
        assert!(err.contains("ADDR:PORT"), "{err}");
        assert!(":8080".parse::<AdminAddress>().is_err());
    }

    #[test]
    fn durations_read_and_print_the_same_way() {
        for text in ["10s", "500ms", "5m", "1h30m", "1m30s", "2s500ms"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert!(
            "0s".parse::<HumanDuration>().is_err(),
            "zero is no interval"
        );
        assert!("soon".parse::<HumanDuration>().is_err());
        let bare = "10".parse::<HumanDuration>().unwrap_err();
        assert!(bare.contains("no unit") && bare.contains("10s"), "{bare}");
    }

    #[test]
    fn lease_flags_default_to_client_go_and_refuse_a_leader_outliving_its_lease() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            runtime: RuntimeArgs,
        }
        let cmd = Cmd::parse_from(["cmd"]);
        assert_eq!(cmd.runtime.lease(), Ok(LeaseTimings::default()));
        let cmd = Cmd::parse_from([
            "cmd",
            "--leader-elect-lease-duration",
            "2s",
            "--leader-elect-renew-deadline",
            "1500ms",
            "--leader-elect-retry-period",
            "250ms",
        ]);
        assert_eq!(cmd.runtime.lease(), Ok(LeaseTimings::fast()));
        let cmd = Cmd::parse_from(["cmd", "--leader-elect-lease-duration", "5s"]);
        let refused = cmd
            .runtime
            .lease()
            .expect_err("renew deadline 10s > lease 5s");
        assert!(
            refused
                .to_string()
                .contains("--leader-elect-renew-deadline (10s)")
                && refused
                    .to_string()
                    .contains("--leader-elect-lease-duration (5s)"),
            "{refused}"
        );
    }

    #[test]
    fn timing_flags_default_to_the_options_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            hub: HubTimingArgs,
            #[command(flatten)]
            member: MemberTimingArgs,
        }
        let cmd = Cmd::parse_from(["cmd"]);
        let (hub, default) = (cmd.hub.options(HubOptions::fast()), HubOptions::default());
        assert_eq!(hub.probe_interval, default.probe_interval);
        assert_eq!(hub.startup_settle, default.startup_settle);
        assert_eq!(hub.retry_min, default.retry_min);
        assert_eq!(
            cmd.member
                .options(MemberOptions::default())
                .cache_sync_timeout,
            MemberOptions::default().cache_sync_timeout
        );
        let cmd = Cmd::parse_from(["cmd", "--probe-interval", "2s", "--retry-min", "250ms"]);
        let hub = cmd.hub.options(HubOptions::default());
        assert_eq!(hub.probe_interval, Duration::from_secs(2));
        assert_eq!(hub.retry_min, Duration::from_millis(250));
    }
}
