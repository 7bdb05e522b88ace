//! `eventually`: wait for a condition by polling it until a deadline, never by a bare sleep.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often the condition is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok`, and returns that value.
///
/// # Panics
///
/// When `deadline` passes first, with the last error `check` returned.
pub async fn eventually<T, E, F, Fut>(deadline: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let until = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(err) if Instant::now() >= until => {
                panic!("condition still false after {deadline:?}; last state: {err:?}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
