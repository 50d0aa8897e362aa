//! How requests end (upstream errors, refused tokens) and per-tool windows.

use super::tests::{settings, MONDAY_10};
use super::*;

/// Short warm-up, burst window 60 s (15 s buckets), factor 5.
fn quick() -> Settings {
    settings(
        r#"{"warmup_requests": 10, "warmup": 1, "denial_streak": 3,
            "burst": {"window": "60s", "factor": 5, "min_requests": 10}}"#,
    )
}

fn call(t: &mut Baselines, x: &Exchange, s: &Settings, key: u64, now: i64, tool: &str) -> Scores {
    let ev = Event {
        key,
        now,
        ip: "10.0.0.1".parse().unwrap(),
        tool: Some(tool),
        item: None,
        principal: None,
    };
    t.observe(x, s, &ev)
}

#[test]
fn upstream_errors_count_into_the_streak_until_a_good_answer() {
    let (x, s, mut t) = (Exchange::new(1), quick(), Baselines::default());
    for i in 0..3 {
        let got = call(&mut t, &x, &s, 1, MONDAY_10 + i, "search");
        assert_eq!(got.get(Signal::DenialStreak), i as f32 / 3.0);
        t.settle(1, Outcome::UpstreamError, MONDAY_10 + i);
    }
    let got = call(&mut t, &x, &s, 1, MONDAY_10 + 3, "search");
    assert_eq!(got.get(Signal::DenialStreak), 1.0);
    // Errors and denials add up.
    t.settle(1, Outcome::Denied, MONDAY_10 + 3);
    t.settle(1, Outcome::Answered, MONDAY_10 + 4);
    let got = call(&mut t, &x, &s, 1, MONDAY_10 + 5, "search");
    assert_eq!(got.get(Signal::DenialStreak), 0.0, "a good answer ends it");
}

#[test]
fn refused_tokens_count_for_verified_callers_and_known_addresses() {
    let (x, s, mut t) = (Exchange::new(1), quick(), Baselines::default());
    // An address never seen: not made up.
    t.settle(5, Outcome::AuthFailed, MONDAY_10);
    assert!(t.get(5).is_none());
    // A verified caller short of a scope: counted, new or not.
    t.refused(&s, 6, MONDAY_10);
    t.refused(&s, 6, MONDAY_10 + 1);
    assert_eq!(t.len(), 1);
    let got = call(&mut t, &x, &s, 6, MONDAY_10 + 2, "search");
    assert!((got.get(Signal::DenialStreak) - 2.0 / 3.0).abs() < 1e-6);
    // A known address: counted.
    call(&mut t, &x, &s, 5, MONDAY_10 + 2, "search");
    for i in 0..3 {
        t.settle(5, Outcome::AuthFailed, MONDAY_10 + 3 + i);
    }
    let got = call(&mut t, &x, &s, 5, MONDAY_10 + 6, "search");
    assert_eq!(got.get(Signal::DenialStreak), 1.0);
}

/// 20 minutes of `search` once a second and `delete` every 30 s.
fn usual(t: &mut Baselines, x: &Exchange, s: &Settings, key: u64) {
    for i in 0..1200 {
        call(t, x, s, key, MONDAY_10 + i, "search");
        if i % 30 == 0 {
            call(t, x, s, key, MONDAY_10 + i, "delete");
        }
    }
}

#[test]
fn a_burst_on_one_tool_scores_against_that_tools_usual_rate() {
    let (x, s, mut t) = (Exchange::new(1), quick(), Baselines::default());
    usual(&mut t, &x, &s, 1);
    usual(&mut t, &x, &s, 2);
    // Both callers call three times a second for 15 s: caller 1 its rare
    // tool, caller 2 its usual one. Their totals are alike.
    let (mut one, mut two) = (0f32, 0f32);
    for i in 0..45 {
        let now = MONDAY_10 + 1200 + i / 3;
        one = one.max(call(&mut t, &x, &s, 1, now, "delete").get(Signal::Burst));
        two = two.max(call(&mut t, &x, &s, 2, now, "search").get(Signal::Burst));
    }
    assert_eq!(one, 1.0, "far above its usual rate of delete");
    assert!(two < 0.3, "{two}: a little above its usual rate");
}

#[test]
fn a_tool_learnt_on_another_core_has_no_window_yet() {
    let (x, s) = (Exchange::new(2), quick());
    let (mut a, mut b) = (Baselines::default(), Baselines::default());
    usual(&mut a, &x, &s, 1);
    a.exchange(&x, 0, &s, MONDAY_10 + 1200);
    b.exchange(&x, 1, &s, MONDAY_10 + 1200);
    let mut top = 0f32;
    for i in 0..45 {
        let got = call(&mut b, &x, &s, 1, MONDAY_10 + 1200 + i / 3, "delete");
        assert_eq!(got.get(Signal::NewTool), 0.0);
        top = top.max(got.get(Signal::Burst));
    }
    assert!(top < 1.0, "{top}: no usual rate of delete on this core");
}

#[test]
fn eviction_keeps_the_index_right() {
    let s = settings(r#"{"max_principals": 50}"#);
    let (x, mut t) = (Exchange::new(1), Baselines::default());
    for key in 0..500u64 {
        call(&mut t, &x, &s, key, MONDAY_10 + key as i64, "search");
        call(&mut t, &x, &s, key % 7, MONDAY_10 + key as i64, "search");
    }
    assert!(t.len() <= 50);
    for key in 0..500u64 {
        if let Some(p) = t.get(key) {
            assert_eq!(p.key, key);
        }
    }
    assert!(t.get(499).is_some() && t.get(3).is_some());
}
