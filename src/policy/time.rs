//! `time` criteria: days of the week and wall-clock windows in an IANA zone.
//! The zone is loaded at compile time; evaluation is one offset lookup and
//! integer arithmetic.

use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAY: i64 = 86_400;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Offsets are precomputed for instants in [`SPAN_START`, `SPAN_END`)
/// (2000-01-01 to 2100-01-01 UTC); outside it the zone is asked directly.
const SPAN_START: i64 = 946_684_800;
const SPAN_END: i64 = 4_102_444_800;

#[derive(Debug)]
pub(crate) struct TimeWindow {
    /// `None` is UTC.
    tz: Option<TimeZone>,
    /// (first second, UTC offset) of each period in the span, sorted.
    offsets: Box<[(i64, i32)]>,
    /// Index in `offsets` of the last period used (a hint; any value is safe).
    last: AtomicUsize,
    /// Bit `d` set: weekday `d` (Monday = 0) is in.
    days: u8,
    /// (start, end) in seconds of the day, end exclusive; start > end wraps
    /// past midnight and the part after midnight belongs to the start's day.
    windows: Box<[(u32, u32)]>,
}

impl TimeWindow {
    pub(super) fn new(
        days: Option<&[String]>,
        hours: &[String],
        tz: Option<&str>,
    ) -> Result<TimeWindow, String> {
        let days = match days {
            None => 0x7f,
            Some(list) => {
                let mut bits = 0u8;
                for d in list {
                    let i = DAY_NAMES
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(d))
                        .ok_or_else(|| {
                            format!("unknown day {d:?} (mon, tue, wed, thu, fri, sat, sun)")
                        })?;
                    bits |= 1 << i;
                }
                bits
            }
        };
        let windows = hours
            .iter()
            .map(|h| window(h))
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        let tz = match tz {
            None => None,
            Some(name) => Some(zone(name)?),
        };
        let offsets = tz.as_ref().map(offsets).unwrap_or_default();
        Ok(TimeWindow {
            tz,
            offsets,
            last: AtomicUsize::new(0),
            days,
            windows,
        })
    }

    /// The UTC offset at `now`, within the span.
    fn offset_in_span(&self, now: i64) -> i32 {
        let o = &self.offsets;
        let hint = self.last.load(Ordering::Relaxed);
        if let Some(&(start, offset)) = o.get(hint) {
            if start <= now && o.get(hint + 1).is_none_or(|next| now < next.0) {
                return offset;
            }
        }
        let i = o.partition_point(|&(start, _)| start <= now).max(1) - 1;
        self.last.store(i, Ordering::Relaxed);
        o[i].1
    }

    pub(super) fn matches(&self, now: i64) -> bool {
        let offset = match &self.tz {
            None => 0,
            Some(_) if (SPAN_START..SPAN_END).contains(&now) => i64::from(self.offset_in_span(now)),
            Some(tz) => match Timestamp::from_second(now) {
                Ok(t) => i64::from(tz.to_offset(t).seconds()),
                Err(_) => return false,
            },
        };
        let local = now.saturating_add(offset);
        let day = local.div_euclid(DAY);
        let second = local.rem_euclid(DAY) as u32;
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let today = (day + 3).rem_euclid(7) as u8;
        let yesterday = (today + 6) % 7;
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.windows.is_empty() {
            return on(today);
        }
        self.windows.iter().any(|&(start, end)| {
            if start < end {
                on(today) && (start..end).contains(&second)
            } else {
                (on(today) && second >= start) || (on(yesterday) && second < end)
            }
        })
    }
}

/// The zone's offset periods over the span, from its transitions.
fn offsets(tz: &TimeZone) -> Box<[(i64, i32)]> {
    // SPAN_START is a constant well inside jiff's range.
    let start = Timestamp::from_second(SPAN_START).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut out = vec![(SPAN_START, tz.to_offset(start).seconds())];
    for t in tz.following(start) {
        let at = t.timestamp().as_second();
        if at >= SPAN_END {
            break;
        }
        out.push((at, t.offset().seconds()));
    }
    out.into_boxed_slice()
}

/// A zone by IANA name; names are checked first so nothing odd reaches the
/// zoneinfo lookup.
fn zone(name: &str) -> Result<TimeZone, String> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('/')
        && !name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
    if !plain || name.eq_ignore_ascii_case("Etc/Unknown") {
        return Err(format!("unknown time zone {name:?}"));
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}"))
}

/// `"HH:MM-HH:MM"`, end exclusive, `24:00` allowed as an end.
fn window(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("bad hours {text:?} (want \"HH:MM-HH:MM\")");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let start = clock(a.trim()).ok_or_else(bad)?;
    let end = clock(b.trim()).ok_or_else(bad)?;
    if start == end || start >= DAY as u32 {
        return Err(format!("empty or invalid window {text:?}"));
    }
    Ok((start, end % DAY as u32))
}

fn clock(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    if !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 3600 + m * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    fn w(days: Option<&[&str]>, hours: &[&str], tz: Option<&str>) -> TimeWindow {
        let days: Option<Vec<String>> = days.map(|d| d.iter().map(|s| s.to_string()).collect());
        let hours: Vec<String> = hours.iter().map(|s| s.to_string()).collect();
        TimeWindow::new(days.as_deref(), &hours, tz).unwrap()
    }

    #[test]
    fn office_hours_in_berlin_across_dst() {
        let t = w(
            Some(&["mon", "tue", "wed", "thu", "fri"]),
            &["08:00-19:00"],
            Some("Europe/Berlin"),
        );
        // Winter (UTC+1): Monday 2026-01-05 07:30 UTC is 08:30 local.
        assert!(t.matches(unix("2026-01-05T07:30:00Z")));
        assert!(!t.matches(unix("2026-01-05T06:30:00Z")));
        // Summer (UTC+2): Monday 2026-07-06 06:30 UTC is 08:30 local.
        assert!(t.matches(unix("2026-07-06T06:30:00Z")));
        assert!(!t.matches(unix("2026-07-06T17:30:00Z")));
        // Saturday.
        assert!(!t.matches(unix("2026-07-04T10:00:00Z")));
    }

    #[test]
    fn wrapping_window_belongs_to_its_start_day() {
        let t = w(Some(&["fri"]), &["22:00-06:00"], None);
        assert!(t.matches(unix("2026-01-09T23:00:00Z"))); // Friday
        assert!(t.matches(unix("2026-01-10T05:59:00Z"))); // Saturday early
        assert!(!t.matches(unix("2026-01-10T06:00:00Z")));
        assert!(!t.matches(unix("2026-01-09T05:00:00Z"))); // Friday early: Thursday's night
    }

    #[test]
    fn several_windows_and_whole_days() {
        let t = w(None, &["08:00-12:00", "13:00-24:00"], None);
        assert!(t.matches(unix("2026-01-09T23:59:59Z")));
        assert!(!t.matches(unix("2026-01-09T12:30:00Z")));
        let t = w(Some(&["Sun"]), &[], None);
        assert!(t.matches(unix("2026-01-11T12:00:00Z")));
        assert!(!t.matches(unix("2026-01-12T12:00:00Z")));
    }

    #[test]
    fn precomputed_offsets_agree_with_the_zone() {
        for name in [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "UTC",
        ] {
            let t = w(None, &[], Some(name));
            let tz = TimeZone::get(name).unwrap();
            let mut now = SPAN_START - 86_400;
            while now < SPAN_END + 86_400 {
                let want = i64::from(tz.to_offset(Timestamp::from_second(now).unwrap()).seconds());
                let got = if (SPAN_START..SPAN_END).contains(&now) {
                    i64::from(t.offset_in_span(now))
                } else {
                    want
                };
                assert_eq!(got, want, "{name} at {now}");
                now += 3 * 3600 + 17;
            }
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let t = w(None, &["08:00-12:00"], Some("America/New_York"));
        assert!(!t.matches(i64::MAX));
        assert!(!t.matches(i64::MIN));
    }

    #[test]
    fn bad_config() {
        let none: &[String] = &[];
        assert!(TimeWindow::new(None, none, Some("Mars/Olympus")).is_err());
        assert!(TimeWindow::new(None, none, Some("../../etc/passwd")).is_err());
        assert!(TimeWindow::new(None, none, Some("Etc/Unknown")).is_err());
        assert!(TimeWindow::new(Some(&["funday".into()]), none, None).is_err());
        for h in [
            "8-9",
            "08:00",
            "25:00-26:00",
            "08:60-09:00",
            "09:00-09:00",
            "24:00-01:00",
            "a:00-b:00",
        ] {
            assert!(TimeWindow::new(None, &[h.into()], None).is_err(), "{h}");
        }
    }
}
