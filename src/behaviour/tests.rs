use super::*;
use crate::config::behaviour::BehaviourConfig;

/// Monday 2026-01-05 10:00 UTC.
pub(super) const MONDAY_10: i64 = 1_767_607_200;

/// `Settings` compiled from a `behaviour` section written as JSON.
pub(super) fn settings(json: &str) -> Settings {
    let c: BehaviourConfig = serde_json::from_str(json).unwrap();
    Settings::compile(&c).unwrap()
}

/// Short warm-up (10 requests, 0 s), burst window 60 s (15 s buckets),
/// factor 5, enumeration of 20 distinct in 60 s.
fn quick() -> Settings {
    settings(
        r#"{"warmup_requests": 10, "warmup": 1,
            "burst": {"window": "60s", "factor": 5, "min_requests": 10},
            "enumeration": {"window": 60, "distinct": 20}}"#,
    )
}

/// A caller whose token was issued at `iat`.
fn alice(iat: i64) -> crate::principal::Principal {
    let mut p = crate::principal::Principal::for_tests("alice");
    p.claims.insert("iat".into(), iat.into());
    p
}

struct Bench {
    x: Exchange,
    t: Baselines,
    s: Settings,
}

impl Bench {
    fn new(s: Settings) -> Bench {
        Bench {
            x: Exchange::new(1),
            t: Baselines::default(),
            s,
        }
    }

    fn call(&mut self, key: u64, now: i64, tool: Option<&str>, item: Option<&str>) -> Scores {
        self.from(key, now, "10.0.0.1", tool, item)
    }

    fn from(
        &mut self,
        key: u64,
        now: i64,
        ip: &str,
        tool: Option<&str>,
        item: Option<&str>,
    ) -> Scores {
        let ev = Event {
            key,
            now,
            ip: ip.parse().unwrap(),
            tool,
            item,
            principal: None,
        };
        self.t.observe(&self.x, &self.s, &ev)
    }
}

/// `n` calls of `tool`, evenly over `[from, from + secs)`; the last scores.
fn steady(b: &mut Bench, key: u64, from: i64, secs: i64, n: i64) -> Scores {
    let mut last = Scores::default();
    for i in 0..n {
        last = b.call(key, from + i * secs / n, Some("search"), None);
    }
    last
}

#[test]
fn burst_scores_only_after_warm_up() {
    let mut b = Bench::new(settings(
        r#"{"warmup_requests": 1000, "warmup": 1,
            "burst": {"window": "60s", "factor": 5, "min_requests": 10}}"#,
    ));
    // A new caller bursting at once: still warming up, never scored.
    for i in 0..200 {
        let s = b.call(1, MONDAY_10 + i / 50, Some("search"), None);
        assert_eq!(s.get(Signal::Burst), 0.0, "request {i}");
    }
    // The same once warmed up: 6 requests a minute for 20 minutes, then
    // 200 within a few seconds.
    let mut b = Bench::new(quick());
    let quiet = steady(&mut b, 1, MONDAY_10, 1200, 120);
    assert_eq!(quiet.get(Signal::Burst), 0.0, "its usual rate");
    let mut top = 0f32;
    for i in 0..200 {
        top = top.max(
            b.call(1, MONDAY_10 + 1200 + i / 50, Some("search"), None)
                .get(Signal::Burst),
        );
    }
    assert_eq!(top, 1.0, "far above its own baseline");
}

#[test]
fn one_callers_burst_does_not_flag_another() {
    let mut b = Bench::new(quick());
    steady(&mut b, 1, MONDAY_10, 1200, 120);
    steady(&mut b, 2, MONDAY_10, 1200, 120);
    for i in 0..200 {
        b.call(1, MONDAY_10 + 1200 + i / 50, Some("search"), None);
    }
    let other = b.call(2, MONDAY_10 + 1204, Some("search"), None);
    assert_eq!(other.get(Signal::Burst), 0.0);
    let burst = b.call(1, MONDAY_10 + 1204, Some("search"), None);
    assert_eq!(burst.get(Signal::Burst), 1.0);
}

#[test]
fn a_busy_caller_is_not_bursting_at_its_usual_rate() {
    let mut b = Bench::new(quick());
    // 600 a minute, steadily, for 20 minutes.
    let s = steady(&mut b, 1, MONDAY_10, 1200, 12_000);
    assert_eq!(s.get(Signal::Burst), 0.0);
}

#[test]
fn enumeration_counts_distinct_items_in_the_window() {
    let mut b = Bench::new(quick());
    // The same resource again and again is not enumeration.
    let mut s = Scores::default();
    for i in 0..100 {
        s = b.call(1, MONDAY_10 + i / 10, None, Some("file:///a"));
    }
    assert!(s.get(Signal::Enumeration) < 0.1, "{s:?}");
    // 20 distinct resources score 1; 10 score about a half. The sketch
    // (linear counting in 512 bits, hashed with a random key) can count a
    // few less than it saw, never more: 25 are sure to score ≥ 0.95.
    let uri = |i: i64| format!("file:///docs/{i}");
    for i in 0..10 {
        s = b.call(1, MONDAY_10 + 20, None, Some(&uri(i)));
    }
    let half = s.get(Signal::Enumeration);
    assert!((0.45..0.65).contains(&half), "{half}");
    for i in 10..25 {
        s = b.call(1, MONDAY_10 + 20, None, Some(&uri(i)));
    }
    assert!(s.get(Signal::Enumeration) >= 0.95, "{s:?}");
    // Another caller reading one of them is not enumerating.
    let other = b.call(2, MONDAY_10 + 20, None, Some(&uri(3)));
    assert!(other.get(Signal::Enumeration) < 0.1);
    // Two windows later it is forgotten.
    let later = b.call(1, MONDAY_10 + 200, None, Some("file:///a"));
    assert!(later.get(Signal::Enumeration) < 0.1, "{later:?}");
}

#[test]
fn a_new_tool_scores_once_after_warm_up() {
    let mut b = Bench::new(quick());
    for i in 0..10 {
        let s = b.call(1, MONDAY_10 + i, Some(["a", "b"][i as usize % 2]), None);
        assert_eq!(s.get(Signal::NewTool), 0.0, "learnt while warming up");
    }
    assert_eq!(
        b.call(1, MONDAY_10 + 20, Some("a"), None)
            .get(Signal::NewTool),
        0.0
    );
    assert_eq!(
        b.call(1, MONDAY_10 + 21, Some("delete_all"), None)
            .get(Signal::NewTool),
        1.0
    );
    assert_eq!(
        b.call(1, MONDAY_10 + 22, Some("delete_all"), None)
            .get(Signal::NewTool),
        0.0,
        "known now"
    );
    assert_eq!(
        b.call(1, MONDAY_10 + 23, None, None).get(Signal::NewTool),
        0.0
    );
}

#[test]
fn off_hours_with_a_fixed_clock() {
    let mut b = Bench::new(settings(
        r#"{"working_hours": {"days": ["mon", "tue", "wed", "thu", "fri"],
            "hours": "08:00-18:00", "utc_offset": "+02:00"}}"#,
    ));
    let hour = 3600;
    // Monday 10:00 UTC is 12:00 at +02:00: working hours.
    assert_eq!(b.call(1, MONDAY_10, None, None).get(Signal::OffHours), 0.0);
    // Monday 17:00 UTC is 19:00 there: outside, never seen at that hour.
    assert_eq!(
        b.call(1, MONDAY_10 + 7 * hour, None, None)
            .get(Signal::OffHours),
        1.0
    );
    // Monday 05:30 UTC is 07:30 there: before the start.
    assert_eq!(
        b.call(2, MONDAY_10 - 4 * hour - 1800, None, None)
            .get(Signal::OffHours),
        1.0
    );
    // Saturday noon there.
    assert_eq!(
        b.call(3, MONDAY_10 + 5 * 24 * hour, None, None)
            .get(Signal::OffHours),
        1.0
    );
    // Tuesday 19:00 there: caller 1 was active at 19:00 on Monday.
    let tuesday = MONDAY_10 + 24 * hour + 7 * hour;
    assert_eq!(b.call(1, tuesday, None, None).get(Signal::OffHours), 0.5);
    // Without working hours the signal is off.
    let mut b = Bench::new(quick());
    assert_eq!(
        b.call(1, MONDAY_10 + 5 * 24 * hour, None, None)
            .get(Signal::OffHours),
        0.0
    );
}

#[test]
fn working_hours_may_wrap_past_midnight() {
    let h = Hours {
        days: 1, // Monday
        start: 22 * 60,
        end: 6 * 60,
        offset_secs: 0,
    };
    let monday = MONDAY_10 - 10 * 3600;
    assert!(h.within(monday + 23 * 3600));
    assert!(
        h.within(monday + 24 * 3600 + 5 * 3600),
        "Tuesday 05:00 belongs to Monday's night"
    );
    assert!(
        !h.within(monday + 5 * 3600),
        "Monday 05:00 belongs to Sunday's night"
    );
    assert!(!h.within(monday + 12 * 3600));
}

#[test]
fn a_new_network_scores_after_warm_up() {
    let mut b = Bench::new(quick());
    for i in 0..10 {
        b.from(1, MONDAY_10 + i, "10.0.0.1", None, None);
    }
    let same_24 = b.from(1, MONDAY_10 + 20, "10.0.0.77", None, None);
    assert_eq!(same_24.get(Signal::NewNetwork), 0.0);
    let other = b.from(1, MONDAY_10 + 21, "192.0.2.9", None, None);
    assert_eq!(other.get(Signal::NewNetwork), 1.0);
    let again = b.from(1, MONDAY_10 + 22, "192.0.2.10", None, None);
    assert_eq!(again.get(Signal::NewNetwork), 0.0);
    let mapped = b.from(1, MONDAY_10 + 23, "::ffff:10.0.0.5", None, None);
    assert_eq!(mapped.get(Signal::NewNetwork), 0.0, "IPv4-mapped is IPv4");
    let v6 = b.from(1, MONDAY_10 + 24, "2001:db8:1::1", None, None);
    assert_eq!(v6.get(Signal::NewNetwork), 1.0);
    let v6_same_48 = b.from(1, MONDAY_10 + 25, "2001:db8:1:ff::1", None, None);
    assert_eq!(v6_same_48.get(Signal::NewNetwork), 0.0);
}

#[test]
fn denial_streak_grows_with_denials_and_ends_with_an_allow() {
    let mut b = Bench::new(settings(r#"{"denial_streak": 4}"#));
    for i in 0..4 {
        let s = b.call(1, MONDAY_10 + i, None, None);
        assert_eq!(s.get(Signal::DenialStreak), i as f32 / 4.0);
        b.t.settle(1, Outcome::Denied, MONDAY_10 + i);
    }
    assert_eq!(
        b.call(1, MONDAY_10 + 5, None, None)
            .get(Signal::DenialStreak),
        1.0
    );
    assert_eq!(
        b.call(2, MONDAY_10 + 5, None, None)
            .get(Signal::DenialStreak),
        0.0
    );
    b.t.settle(1, Outcome::Answered, MONDAY_10 + 5);
    assert_eq!(
        b.call(1, MONDAY_10 + 6, None, None)
            .get(Signal::DenialStreak),
        0.0
    );
}

#[test]
fn the_table_keeps_at_most_max_principals_and_forgets_the_idlest() {
    let mut b = Bench::new(settings(r#"{"max_principals": 100}"#));
    for key in 0..1000u64 {
        b.call(key, MONDAY_10 + key as i64, None, None);
        // Caller 7 stays active throughout.
        b.call(7, MONDAY_10 + key as i64, None, None);
        assert!(b.t.len() <= 100, "{} callers after {key}", b.t.len());
    }
    assert!(b.t.get(7).is_some(), "the active caller is kept");
    assert!(b.t.get(999).is_some(), "the newest is kept");
    assert!(b.t.get(0).is_none(), "the idlest are forgotten");
    assert!(b.t.len() > 80, "evicts a fraction, not everything");
}

#[test]
fn a_step_up_holds_until_a_newer_token() {
    let mut b = Bench::new(quick());
    let mut p = alice(MONDAY_10 - 60);
    let key = b.x.key(Some(&p), "10.0.0.1".parse().unwrap());
    let call = |b: &mut Bench, p: &crate::principal::Principal, now: i64| {
        let ev = Event {
            key,
            now,
            ip: "10.0.0.1".parse().unwrap(),
            tool: None,
            item: None,
            principal: Some(p),
        };
        b.t.observe(&b.x, &b.s, &ev)
    };
    assert!(!call(&mut b, &p, MONDAY_10).step_up_pending);
    b.t.settle(key, Outcome::SteppedUp, MONDAY_10);
    assert!(
        call(&mut b, &p, MONDAY_10 + 5).step_up_pending,
        "same token"
    );
    p.claims.insert("iat".into(), MONDAY_10.into());
    assert!(
        call(&mut b, &p, MONDAY_10 + 6).step_up_pending,
        "issued before"
    );
    p.claims.insert("auth_time".into(), (MONDAY_10 + 7).into());
    let s = call(&mut b, &p, MONDAY_10 + 8);
    assert!(!s.step_up_pending, "authorized again since");
    assert_eq!(s.get(Signal::DenialStreak), 0.0, "the streak starts over");
}

#[test]
fn cores_merge_counts_sketches_and_learnt_tools() {
    let x = Exchange::new(2);
    let s = quick();
    let (mut a, mut b) = (Baselines::default(), Baselines::default());
    let ev = |now: i64, tool: Option<&'static str>, item: Option<&'static str>| Event {
        key: 1,
        now,
        ip: "10.0.0.1".parse().unwrap(),
        tool,
        item,
        principal: None,
    };
    // Warm-up and a tool learnt on core 0 only.
    for i in 0..20 {
        a.observe(&x, &s, &ev(MONDAY_10 + i, Some("search"), None));
    }
    // Enumeration split across the cores: 25 items (see
    // `enumeration_counts_distinct_items_in_the_window`), 13 and 12.
    let items: Vec<&'static str> = (0..25)
        .map(|i| &*Box::leak(format!("file:///{i}").into_boxed_str()))
        .collect();
    let (left, right) = items.split_at(13);
    for item in left {
        a.observe(&x, &s, &ev(MONDAY_10 + 30, None, Some(item)));
    }
    for item in right {
        b.observe(&x, &s, &ev(MONDAY_10 + 30, None, Some(item)));
    }
    let alone = b.observe(&x, &s, &ev(MONDAY_10 + 31, Some("search"), None));
    assert!(alone.get(Signal::Enumeration) < 0.7, "{alone:?}");
    a.exchange(&x, 0, &s, MONDAY_10 + 31);
    b.exchange(&x, 1, &s, MONDAY_10 + 31);
    assert_eq!(x.published(), 2);
    let merged = b.observe(&x, &s, &ev(MONDAY_10 + 32, Some("search"), None));
    assert!(merged.get(Signal::Enumeration) >= 0.95, "{merged:?}");
    assert_eq!(merged.get(Signal::NewTool), 0.0, "learnt on the other core");
    // A caller new on core 1 starts from what core 0 knows.
    let mut c = Baselines::default();
    c.exchange(&x, 1, &s, MONDAY_10 + 33);
    let seeded = c.observe(&x, &s, &ev(MONDAY_10 + 34, Some("search"), None));
    assert_eq!(seeded.get(Signal::NewTool), 0.0);
    assert_eq!(c.get(1).unwrap().tools.len(), 1);
}

#[test]
fn bad_settings_are_config_errors() {
    for (json, want) in [
        (r#"{"burst": {"window": 2}}"#, "burst.window"),
        (r#"{"burst": {"factor": 1}}"#, "burst.factor"),
        (
            r#"{"enumeration": {"distinct": 5000}}"#,
            "enumeration.distinct",
        ),
        (r#"{"report_above": 1.5}"#, "report_above"),
        (r#"{"max_principals": 0}"#, "max_principals"),
        (r#"{"denial_streak": 0}"#, "denial_streak"),
        (r#"{"working_hours": {"days": ["someday"]}}"#, "days"),
        (r#"{"working_hours": {"hours": "8-18"}}"#, "hours"),
        (
            r#"{"working_hours": {"hours": "08:00-08:00"}}"#,
            "empty window",
        ),
        (r#"{"working_hours": {"utc_offset": "CET"}}"#, "utc_offset"),
    ] {
        let c: BehaviourConfig = serde_json::from_str(json).unwrap();
        let errs = Settings::compile(&c).unwrap_err();
        assert!(errs.iter().any(|e| e.contains(want)), "{json}: {errs:?}");
    }
    let ok = settings(r#"{"working_hours": {"hours": "22:00-06:00", "utc_offset": "-05:30"}}"#);
    assert_eq!(ok.hours.unwrap().offset_secs, -(5 * 3600 + 1800));
}

#[test]
fn a_step_up_on_one_core_holds_on_the_others() {
    let x = Exchange::new(2);
    let s = quick();
    let (mut a, mut b) = (Baselines::default(), Baselines::default());
    let mut p = alice(MONDAY_10 - 60);
    let key = x.key(Some(&p), "10.0.0.1".parse().unwrap());
    a.observe(&x, &s, &ev(key, &p, MONDAY_10));
    b.observe(&x, &s, &ev(key, &p, MONDAY_10));
    a.settle(key, Outcome::SteppedUp, MONDAY_10);
    assert!(
        !b.observe(&x, &s, &ev(key, &p, MONDAY_10 + 1))
            .step_up_pending
    );
    a.exchange(&x, 0, &s, MONDAY_10 + 1);
    b.exchange(&x, 1, &s, MONDAY_10 + 1);
    assert!(
        b.observe(&x, &s, &ev(key, &p, MONDAY_10 + 2))
            .step_up_pending,
        "merged"
    );
    // A newer token settles it on core 1; core 0's older summary does not
    // bring it back there.
    p.claims.insert("iat".into(), (MONDAY_10 + 5).into());
    assert!(
        !b.observe(&x, &s, &ev(key, &p, MONDAY_10 + 6))
            .step_up_pending
    );
    b.exchange(&x, 1, &s, MONDAY_10 + 7);
    let mut stale = p.clone();
    stale.claims.insert("iat".into(), (MONDAY_10 - 60).into());
    assert!(
        !b.observe(&x, &s, &ev(key, &stale, MONDAY_10 + 8))
            .step_up_pending
    );
}

/// A newer token settles a step-up on the core it reaches, and the other
/// cores' summaries from before it (the windows that raised it) neither
/// raise it again there nor keep it on the core that raised it.
#[test]
fn a_settled_step_up_is_not_raised_again_by_an_older_summary() {
    let x = Exchange::new(2);
    let s = quick();
    let (mut a, mut b) = (Baselines::default(), Baselines::default());
    let mut p = alice(MONDAY_10 - 60);
    let key = x.key(Some(&p), "10.0.0.1".parse().unwrap());
    let item = |i: i64| &*Box::leak(format!("file:///{i}").into_boxed_str());
    // Core 0 sees the enumeration (25 items: see
    // `enumeration_counts_distinct_items_in_the_window`) and steps the
    // caller up.
    let mut last = Scores::default();
    for i in 0..25 {
        last = a.observe(
            &x,
            &s,
            &Event {
                item: Some(item(i)),
                ..ev(key, &p, MONDAY_10)
            },
        );
    }
    assert!(last.get(Signal::Enumeration) >= 0.95, "{last:?}");
    a.settle(key, Outcome::SteppedUp, MONDAY_10);
    a.exchange(&x, 0, &s, MONDAY_10 + 1);
    b.exchange(&x, 1, &s, MONDAY_10 + 1);
    let merged = b.observe(&x, &s, &ev(key, &p, MONDAY_10 + 2));
    assert!(merged.step_up_pending && merged.get(Signal::Enumeration) >= 0.95);
    // A newer token reaches core 1 only.
    p.claims.insert("iat".into(), (MONDAY_10 + 3).into());
    let settled = b.observe(&x, &s, &ev(key, &p, MONDAY_10 + 4));
    assert!(!settled.step_up_pending);
    // Core 0's summary is still the one from before the token.
    b.exchange(&x, 1, &s, MONDAY_10 + 5);
    let after = b.observe(&x, &s, &ev(key, &p, MONDAY_10 + 5));
    assert!(!after.step_up_pending);
    assert!(after.get(Signal::Enumeration) < 0.1, "{after:?}");
    // Core 0 learns of the token from core 1's summary.
    a.exchange(&x, 0, &s, MONDAY_10 + 6);
    let there = a.observe(&x, &s, &ev(key, &p, MONDAY_10 + 6));
    assert!(!there.step_up_pending);
    assert!(there.get(Signal::Enumeration) < 0.1, "{there:?}");
    // And once core 0 has published again, both agree.
    b.exchange(&x, 1, &s, MONDAY_10 + 7);
    let later = b.observe(&x, &s, &ev(key, &p, MONDAY_10 + 7));
    assert!(!later.step_up_pending && later.get(Signal::Enumeration) < 0.1);
}

fn ev(key: u64, p: &crate::principal::Principal, now: i64) -> Event<'_> {
    Event {
        key,
        now,
        ip: "10.0.0.1".parse().unwrap(),
        tool: None,
        item: None,
        principal: Some(p),
    }
}

/// A burst lasting past a bucket boundary stays a burst: a finished bucket
/// raises the usual rate to at most twice what it was.
#[test]
fn a_long_burst_does_not_become_the_usual_rate_at_once() {
    let mut b = Bench::new(settings(
        r#"{"warmup_requests": 20, "warmup": 1,
            "burst": {"window": "20s", "factor": 3, "min_requests": 40}}"#,
    ));
    // One call a second for 20 s, then 25 a second for 10 s (two buckets).
    for t in 0..20 {
        b.call(1, MONDAY_10 + t, Some("echo"), None);
    }
    let usual = b.t.get(1).unwrap().baseline;
    assert!((15.0..=25.0).contains(&usual), "{usual}");
    let scores: Vec<f32> = (0..250)
        .map(|i| {
            b.call(1, MONDAY_10 + 20 + i / 25, Some("echo"), None)
                .get(Signal::Burst)
        })
        .collect();
    assert!(scores[..20].iter().all(|s| *s < 0.9), "{:?}", &scores[..20]);
    assert!(scores[50..].iter().all(|s| *s == 1.0), "{scores:?}");
    assert!(b.t.get(1).unwrap().baseline <= 2.0 * usual);
}
