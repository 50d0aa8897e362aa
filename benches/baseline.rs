//! Behaviour baselines: the per-request update (key hash, count, score,
//! settle) for one caller calling a known tool, for reads of distinct
//! resources (the enumeration sketch recounted each time), and across
//! 10,000 callers (cache misses). Goal: at most 100 ns per request.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::internal::behaviour::{
    Baselines, BehaviourConfig, Event, Exchange, Outcome, Settings,
};
use portcullis::internal::Principal;

/// Monday 2026-01-05 10:00 UTC.
const NOW: i64 = 1_767_607_200;

fn settings() -> Settings {
    let c: BehaviourConfig = serde_json::from_str(
        r#"{"warmup_requests": 10, "warmup": 1,
            "working_hours": {"hours": "08:00-18:00", "utc_offset": "+01:00"}}"#,
    )
    .unwrap();
    Settings::compile(&c).unwrap()
}

fn principal(sub: &str) -> Principal {
    Principal {
        issuer_name: Arc::from("corp"),
        issuer: "https://idp.example.com".into(),
        sub: sub.into(),
        email: Some("alice@example.com".into()),
        groups: vec!["eng".into()],
        scopes: vec!["mcp:read".into()],
        client_id: Some("cli".into()),
        exp: 0,
        claims: Default::default(),
        baseline_key: Default::default(),
        record_json: Default::default(),
    }
}

/// One request as the request path does it: key, observe, settle.
fn request(
    t: &mut Baselines,
    x: &Exchange,
    s: &Settings,
    p: &Principal,
    now: i64,
    tool: Option<&str>,
    item: Option<&str>,
) -> f32 {
    let ip: IpAddr = [10, 1, 2, 3].into();
    let key = x.key(Some(p), ip);
    let ev = Event {
        key,
        now,
        ip,
        tool,
        item,
        principal: Some(p),
    };
    let scores = t.observe(x, s, &ev);
    t.settle(key, Outcome::Answered, now);
    scores.values[0]
}

fn bench(c: &mut Criterion) {
    let s = settings();
    let x = Exchange::new(4);
    let alice = principal("alice");

    let mut t = Baselines::default();
    let mut i = 0i64;
    c.bench_function("baseline/tool_call", |b| {
        b.iter(|| {
            i += 1;
            // About 1000 requests a second.
            let now = NOW + i / 1000;
            black_box(request(
                &mut t,
                &x,
                &s,
                black_box(&alice),
                now,
                Some("search"),
                None,
            ))
        })
    });

    let uris: Vec<String> = (0..4096)
        .map(|i| format!("file:///srv/docs/{i}.md"))
        .collect();
    let mut t = Baselines::default();
    let mut i = 0usize;
    c.bench_function("baseline/distinct_resource_reads", |b| {
        b.iter(|| {
            i += 1;
            let now = NOW + (i / 1000) as i64;
            let uri = &uris[i % uris.len()];
            black_box(request(&mut t, &x, &s, &alice, now, None, Some(uri)))
        })
    });

    let people: Vec<Principal> = (0..10_000)
        .map(|i| principal(&format!("user{i}")))
        .collect();
    let mut t = Baselines::default();
    let mut i = 0usize;
    c.bench_function("baseline/tool_call_10k_callers", |b| {
        b.iter(|| {
            i += 1;
            let now = NOW + (i / 1000) as i64;
            let p = &people[i.wrapping_mul(7919) % people.len()];
            black_box(request(&mut t, &x, &s, p, now, Some("search"), None))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
