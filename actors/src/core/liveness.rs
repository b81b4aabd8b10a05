//! Host liveness: Ready while heartbeats arrive, Unreachable once they stop.

use std::time::Duration;

use qvdc_transport::protocol::Liveness;
use tokio::time::Instant;

/// Whether a host last heard from at `last_seen` counts as alive at `now`.
pub fn liveness(last_seen: Option<Instant>, now: Instant, stale_after: Duration) -> Liveness {
    match last_seen {
        Some(seen) if now.saturating_duration_since(seen) <= stale_after => Liveness::Ready,
        _ => Liveness::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_longer_than_the_bound_is_unreachable() {
        let t0 = Instant::now();
        let bound = Duration::from_secs(3);
        assert_eq!(liveness(None, t0, bound), Liveness::Unreachable);
        assert_eq!(liveness(Some(t0), t0 + bound, bound), Liveness::Ready);
        assert_eq!(
            liveness(Some(t0), t0 + bound + Duration::from_millis(1), bound),
            Liveness::Unreachable
        );
    }
}
