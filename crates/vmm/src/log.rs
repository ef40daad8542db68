//! Logging with `tracing`: levels, text or JSON on stderr, and a rate limit on what a guest can
//! make the VMM log.
//!
//! A guest controls how often it misbehaves. Warnings it triggers go through [`guest_warn!`],
//! which lets a burst of [`BURST`] through and then [`PER_SECOND`] a second; the rest are
//! counted ([`dropped`], and the metric `popek_log_messages_dropped_total`), never printed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Guest-triggered messages allowed at once.
pub const BURST: f64 = 20.0;
/// Guest-triggered messages allowed per second after the burst.
pub const PER_SECOND: f64 = 5.0;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static BUCKET: Mutex<Option<(f64, Instant)>> = Mutex::new(None);

/// Errors of setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter does not parse.
    #[error("Invalid --log-level '{0}': use error, warn, info, debug or trace")]
    Level(String),
}

/// Sends logs to stderr at `level` and above, as JSON lines when `json`.
pub fn init(level: &str, json: bool) -> Result<(), LogError> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|_| LogError::Level(level.to_string()))?;
    if !["error", "warn", "info", "debug", "trace"].contains(&level) {
        return Err(LogError::Level(level.to_string()));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// Takes one token from the guest-message bucket; false (and counted) when it is empty.
pub fn guest_message_allowed() -> bool {
    let mut b = BUCKET.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let (tokens, last) = b.get_or_insert((BURST, now));
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * PER_SECOND).min(BURST);
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// Guest-triggered messages dropped so far.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A warning the guest caused, rate limited.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {
        if $crate::log::guest_message_allowed() {
            ::tracing::warn!(guest = true, $($arg)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let before = dropped();
        let allowed = (0..1000).filter(|_| guest_message_allowed()).count();
        assert!(allowed <= BURST as usize + 1, "{allowed}");
        assert!(dropped() - before >= 1000 - BURST as u64 - 1);
    }
}
