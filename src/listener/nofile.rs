//! The open-file limit: every client costs a descriptor (two while proxied), and the default
//! soft limit of 1024 is soon reached. wakegate raises its soft limit to the hard one at start
//! and says so, with a warning when even the hard limit is low.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{info, warn};

/// Below this hard limit, a few hundred slow or idle clients can use up every descriptor.
pub const LOW_HARD_LIMIT: u64 = 4096;

/// Raises the soft RLIMIT_NOFILE to the hard limit and logs what it did. Returns the soft
/// limit in force afterwards (`None`: unlimited).
pub fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    let mut now = soft;
    if soft != hard {
        let raised = Rlimit {
            current: hard,
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                now = hard;
                info!(
                    from = show(soft),
                    to = show(hard),
                    "Raised the open-file limit to its hard limit."
                );
            }
            Err(e) => {
                warn!(soft = show(soft), hard = show(hard), error = %e, "Cannot raise the open-file limit to its hard limit.");
            }
        }
    }
    if let Some(hard) = hard
        && hard < LOW_HARD_LIMIT
    {
        warn!(
            hard,
            "The open-file hard limit is {hard}: a few hundred idle or slow clients can use up every descriptor. Raise it (LimitNOFILE= in the systemd unit, `ulimit -Hn` in the shell that starts wakegate) to at least {LOW_HARD_LIMIT}."
        );
    }
    now
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}
