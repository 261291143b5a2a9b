//! RFC 3339 timestamps without a date crate: state's `created` (RFC3339Nano, UTC) and the
//! `time` field of JSON log lines.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2006-01-02T15:04:05.999999999Z` for `t` (nanoseconds kept, like Go's RFC3339Nano minus
/// trailing zeros).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, clock) = civil(d.as_secs());
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return format!("{date}T{clock}Z");
    }
    let frac = format!("{nanos:09}");
    format!("{date}T{clock}.{}Z", frac.trim_end_matches('0'))
}

/// `2006-01-02T15:04:05Z` (seconds precision), as logrus writes `time`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, clock) = civil(d.as_secs());
    format!("{date}T{clock}Z")
}

/// Split Unix seconds into "YYYY-MM-DD" and "hh:mm:ss" (UTC), Howard Hinnant's algorithm.
fn civil(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.12Z");
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
