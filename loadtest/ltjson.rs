//! JSON pieces the load-test helpers print (`ltconn`, `ltrate`): included
//! by each with `#[path]`, as each is its own crate.

/// Count, mean and percentiles in µs of samples in ns, as a JSON object.
pub fn json_pcts(v: &mut [u64]) -> String {
    v.sort_unstable();
    let p = |q: f64| -> String {
        if v.is_empty() {
            "null".into()
        } else {
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            format!("{:.1}", v[i] as f64 / 1000.0)
        }
    };
    let mean = if v.is_empty() {
        "null".to_string()
    } else {
        format!(
            "{:.1}",
            v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1000.0
        )
    };
    format!(
        "{{\"n\":{},\"mean_us\":{mean},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        p(1.0)
    )
}

/// A string's content for a JSON string: quotes and backslashes escaped.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
