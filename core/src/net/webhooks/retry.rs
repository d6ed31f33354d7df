//! When to try a failed request again: the schedule from `realtime.webhook_retry_schedule`,
//! spread by a random fifth so that receivers coming back are not hit by every webhook in the
//! same second, and the receiver's own `Retry-After` where it gives one.

use std::time::{Duration, SystemTime};

/// The default schedule: Standard Webhooks' (immediately, then 5 s, 5 min, 30 min, 2 h, 5 h,
/// 10 h, 10 h: about 28 hours of trying).
pub const DEFAULT_SCHEDULE: &str = "5s, 5min, 30min, 2h, 5h, 10h, 10h";

/// Longest wait a receiver's `Retry-After` is taken up to.
const MOST_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A schedule as the setting writes it: waits separated by commas, each a number and one of
/// PostgreSQL's time units (`ms`, `s`, `min`, `h`, `d`).
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let waits: Vec<Duration> = text
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(parse_wait)
        .collect::<Result<_, _>>()?;
    if waits.is_empty() {
        return Err("the schedule names no wait".into());
    }
    Ok(waits)
}

fn parse_wait(wait: &str) -> Result<Duration, String> {
    let digits = wait
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(wait.len());
    let (number, unit) = wait.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("\"{wait}\" is not a number followed by ms, s, min, h or d"))?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("\"{wait}\": the unit is one of ms, s, min, h, d")),
    };
    number
        .checked_mul(unit_ms)
        .filter(|ms| *ms <= 30 * 86_400_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{wait}\" is longer than 30 days"))
}

/// `wait`, give or take a fifth, at random.
pub fn jittered(wait: Duration) -> Duration {
    let fifth = wait.as_millis() as u64 / 5;
    if fifth == 0 {
        return wait;
    }
    let offset = random() % (2 * fifth + 1);
    Duration::from_millis(wait.as_millis() as u64 - fifth + offset)
}

/// Not for secrets: spreading retries only.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// A `Retry-After` header's wait: seconds, or an HTTP date; at most a day.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let at =
                SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
            at.duration_since(now).unwrap_or_default()
        }
    };
    Some(wait.min(MOST_RETRY_AFTER))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn schedules_read_as_postgres_writes_times() {
        assert_eq!(
            parse_schedule(DEFAULT_SCHEDULE).unwrap(),
            [5, 300, 1800, 7200, 18000, 36000, 36000].map(Duration::from_secs)
        );
        assert_eq!(
            parse_schedule("100ms,1s , 2d").unwrap(),
            [
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(2 * 86400)
            ]
        );
        for bad in [
            "",
            " , ",
            "5",
            "5 sec",
            "s",
            "-1s",
            "31d",
            "99999999999999999999s",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let wait = Duration::from_secs(100);
        let seen: Vec<Duration> = (0..200).map(|_| jittered(wait)).collect();
        assert!(seen
            .iter()
            .all(|w| *w >= Duration::from_secs(80) && *w <= Duration::from_secs(120)));
        assert!(seen.iter().any(|w| *w != seen[0]), "no spread at all");
        assert_eq!(jittered(Duration::from_millis(3)), Duration::from_millis(3));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 UTC
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("9999999", now), Some(MOST_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
