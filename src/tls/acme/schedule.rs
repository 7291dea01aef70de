//! When to renew a certificate and when to try again after a failure: pure functions of times
//! in unix seconds, so that the rules are tested without a clock or a CA.
//!
//! Invariants:
//! - Without ARI a certificate is renewed when a third of its lifetime remains (Caddy's rule;
//!   30 days of a 90-day certificate, 15 of a 45-day one).
//! - With an ARI window (RFC 9773) the renewal time is one point in it, chosen once per
//!   certificate (`pick`), so that checks do not move it and instances sharing a CA spread out.
//!   A window the CA got wrong (ends before it starts, or lies after the certificate expired)
//!   is ignored: the third-of-lifetime rule applies.
//! - A failure waits [`FIRST_RETRY`] and doubles with each further failure, capped at
//!   [`MAX_RETRY`]; jitter only ever shortens a wait (by up to a tenth), so the cap holds.

/// The wait after a first failure, in seconds.
pub const FIRST_RETRY: i64 = 60;
/// The longest wait between two attempts, in seconds (a day).
pub const MAX_RETRY: i64 = 86_400;

/// A renewal window suggested by the CA (ARI), unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// When a certificate valid from `not_before` to `not_after` should be renewed. `pick` in
/// `[0, 1)` places the time inside the ARI `window` when there is one.
pub fn renewal_time(not_before: i64, not_after: i64, window: Option<Window>, pick: f64) -> i64 {
    if let Some(w) = window.filter(|w| w.start <= w.end && w.start < not_after) {
        let span = (w.end.min(not_after) - w.start) as f64;
        return w.start + (span * pick.clamp(0.0, 1.0)) as i64;
    }
    if not_after <= not_before {
        // Nonsense validity: due at once (the caller's clock decides what "once" is).
        return not_before.min(not_after);
    }
    not_after - (not_after - not_before) / 3
}

/// How long to wait after the `failures`-th failure in a row (1 = the first), in seconds.
/// `jitter` in `[0, 1)` shortens the wait by up to a tenth.
pub fn retry_delay(failures: u32, jitter: f64) -> i64 {
    let doublings = failures.saturating_sub(1).min(20);
    let base = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
    base - (base as f64 * 0.1 * jitter.clamp(0.0, 1.0)) as i64
}

/// When to ask the CA for the renewal window again, given its `Retry-After` hint in seconds:
/// not sooner than an hour (a CA asking for less is not obeyed), not later than a day.
pub fn ari_recheck(retry_after: u64) -> i64 {
    (retry_after.min(MAX_RETRY as u64) as i64).max(3_600)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn a_third_of_the_lifetime_remains() {
        assert_eq!(renewal_time(0, 90 * DAY, None, 0.5), 60 * DAY);
        assert_eq!(renewal_time(1_000, 1_000 + 45 * DAY, None, 0.0), 1_000 + 30 * DAY);
        // Thirty seconds (a test CA): twenty seconds in.
        assert_eq!(renewal_time(100, 130, None, 0.9), 120);
        // Validity that ends before it begins: due at once.
        assert_eq!(renewal_time(500, 400, None, 0.0), 400);
    }

    #[test]
    fn ari_window_is_preferred_and_picked_inside() {
        let w = Window { start: 50 * DAY, end: 52 * DAY };
        assert_eq!(renewal_time(0, 90 * DAY, Some(w), 0.0), 50 * DAY);
        assert_eq!(renewal_time(0, 90 * DAY, Some(w), 0.5), 51 * DAY);
        let late = renewal_time(0, 90 * DAY, Some(w), 0.999_999);
        assert!(late < 52 * DAY && late > 51 * DAY);
        // An early window (the CA wants it replaced now, e.g. before a revocation) wins over
        // the third-of-lifetime rule.
        let early = Window { start: DAY, end: DAY + 3_600 };
        assert_eq!(renewal_time(0, 90 * DAY, Some(early), 0.0), DAY);
        // A pick outside [0, 1) stays inside the window.
        assert_eq!(renewal_time(0, 90 * DAY, Some(w), 7.0), 52 * DAY);
        assert_eq!(renewal_time(0, 90 * DAY, Some(w), -1.0), 50 * DAY);
    }

    #[test]
    fn a_broken_ari_window_falls_back_to_the_rule() {
        let backwards = Window { start: 52 * DAY, end: 50 * DAY };
        assert_eq!(renewal_time(0, 90 * DAY, Some(backwards), 0.5), 60 * DAY);
        let after_expiry = Window { start: 91 * DAY, end: 92 * DAY };
        assert_eq!(renewal_time(0, 90 * DAY, Some(after_expiry), 0.5), 60 * DAY);
        // A window that runs past expiry is cut at expiry.
        let straddling = Window { start: 80 * DAY, end: 100 * DAY };
        assert_eq!(renewal_time(0, 90 * DAY, Some(straddling), 0.999_999_9), 90 * DAY - 1);
    }

    #[test]
    fn failures_back_off_doubling_up_to_a_day() {
        assert_eq!(retry_delay(1, 0.0), 60);
        assert_eq!(retry_delay(2, 0.0), 120);
        assert_eq!(retry_delay(3, 0.0), 240);
        assert_eq!(retry_delay(11, 0.0), 61_440);
        assert_eq!(retry_delay(12, 0.0), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX, 0.0), MAX_RETRY);
        // Zero failures is treated as the first.
        assert_eq!(retry_delay(0, 0.0), 60);
        // Jitter shortens by at most a tenth and never passes the cap.
        assert_eq!(retry_delay(1, 0.999), 55);
        assert!(retry_delay(40, 0.5) <= MAX_RETRY && retry_delay(40, 0.5) >= MAX_RETRY * 9 / 10);
        assert_eq!(retry_delay(1, 5.0), 54);
    }

    #[test]
    fn ari_rechecks_are_bounded() {
        assert_eq!(ari_recheck(0), 3_600);
        assert_eq!(ari_recheck(6 * 3_600), 6 * 3_600);
        assert_eq!(ari_recheck(u64::MAX), MAX_RETRY);
    }
}
