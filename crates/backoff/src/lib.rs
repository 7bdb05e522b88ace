//! The one retry policy of AgentOS Metrics, for every client of RabbitMQ and PostgreSQL
//! (metrics-ingest's reconnects and batch retries, metrics-publisher's reconnects).
//!
//! Waits grow exponentially from a minimum to a maximum, each with a random jitter (backon's
//! exponential backoff: a step `d` becomes a random wait in `[d, 2d)`; steps double up to half the
//! maximum, so the longest waits still spread over `[max / 2, max)`), so that replicas that lost
//! the same dependency at the same moment do not come back in lockstep. The policy starts again from the minimum only after the dependency has worked for a
//! sustained time, [`Backoff::sustained`]: a dependency that fails again right after each
//! success (a flapping server, a crash on every first query) keeps being waited on at the long
//! end instead of being hit at the short one.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Waits between attempts against one dependency.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    waits: ExponentialBackoff,
    max: Duration,
    sustained: Duration,
    working_since: Option<Instant>,
}

impl Backoff {
    /// Waits from `min` (the first, plus jitter) doubling up to `max`; the policy resets once the
    /// dependency has worked for `max` (the longest wait) without failing.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_sustained(min, max, max)
    }

    /// Like [`Backoff::new`], resetting after `sustained` of success.
    pub fn with_sustained(min: Duration, max: Duration, sustained: Duration) -> Self {
        let max = max.max(min);
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay((max / 2).max(min))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            waits: builder.build(),
            builder,
            max,
            sustained,
            working_since: None,
        }
    }

    /// How long the dependency must work before the waits start again from the minimum.
    pub fn sustained(&self) -> Duration {
        self.sustained
    }

    /// An attempt failed: the wait before the next one. It continues the current escalation
    /// unless the dependency had worked for [`Backoff::sustained`] since the last failure.
    pub fn next_wait(&mut self) -> Duration {
        if let Some(since) = self.working_since.take()
            && since.elapsed() >= self.sustained
        {
            self.waits = self.builder.build();
        }
        self.waits.next().unwrap_or(self.max).min(self.max)
    }

    /// An attempt succeeded: the dependency works from now on, until the next failure.
    pub fn succeeded(&mut self) {
        self.working_since.get_or_insert_with(Instant::now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_millis(1000);

    #[test]
    fn waits_grow_with_jitter_up_to_the_maximum() {
        let mut backoff = Backoff::new(MIN, MAX);
        let waits: Vec<Duration> = (0..12).map(|_| backoff.next_wait()).collect();
        // Each wait lies in [d, 2d) for its step d = min * 2^n, capped at half the maximum.
        for (n, wait) in waits.iter().enumerate() {
            let step = MIN.saturating_mul(1 << n.min(20)).min(MAX / 2);
            assert!(
                *wait >= step && *wait <= (step * 2).min(MAX),
                "{n}: {wait:?}"
            );
        }
        assert!(waits[11] >= MAX / 2);
    }

    #[test]
    fn jitter_spreads_replicas_that_fail_together() {
        let first: Vec<Duration> = {
            let mut backoff = Backoff::new(MIN, MAX);
            (0..3).map(|_| backoff.next_wait()).collect()
        };
        // Twenty replicas starting at once: they do not all wait the same.
        let distinct = (0..20)
            .map(|_| {
                let mut backoff = Backoff::new(MIN, MAX);
                (0..3).map(|_| backoff.next_wait()).collect::<Vec<_>>()
            })
            .filter(|waits| *waits != first)
            .count();
        assert!(distinct > 0);
    }

    #[test]
    fn a_short_success_does_not_reset_the_waits() {
        let mut backoff = Backoff::with_sustained(MIN, MAX, Duration::from_secs(3600));
        for _ in 0..6 {
            backoff.next_wait();
        }
        backoff.succeeded();
        assert!(backoff.next_wait() >= MAX / 2);
    }

    #[test]
    fn a_sustained_success_resets_the_waits() {
        let mut backoff = Backoff::with_sustained(MIN, MAX, Duration::ZERO);
        for _ in 0..6 {
            backoff.next_wait();
        }
        backoff.succeeded();
        assert!(backoff.next_wait() < MIN * 2);
    }
}
