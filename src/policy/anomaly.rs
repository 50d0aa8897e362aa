//! The `anomaly` criterion (behaviour baselines' scores) and what `step_up`
//! rules need: compiled here, evaluated without allocating.

use super::eval::Tri;
use super::Facts;
use crate::behaviour::Signal;
use crate::config::policy::AnomalyTest;

/// `anomaly`: signals (a bit per signal index) and the score to exceed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anomaly {
    signals: u8,
    above: f32,
}

impl Anomaly {
    pub(super) fn compile(t: &AnomalyTest) -> Result<Anomaly, String> {
        if t.signals.is_empty() {
            return Err("anomaly: signals needs at least one signal".into());
        }
        let mut signals = 0u8;
        for name in &t.signals {
            match Signal::parse(name) {
                Some(s) => signals |= 1 << s.index(),
                None => {
                    return Err(format!(
                        "anomaly: unknown signal {name:?} (want burst, new_tool, enumeration, off_hours, new_network or denial_streak)"
                    ))
                }
            }
        }
        if !(0.0..1.0).contains(&t.above) {
            return Err(format!(
                "anomaly: above {} is not from 0 up to (not including) 1",
                t.above
            ));
        }
        Ok(Anomaly {
            signals,
            above: t.above as f32,
        })
    }

    /// True when any of the signals scores above the threshold; false when
    /// the request was not scored (or a list is being filtered).
    #[inline]
    pub(super) fn eval(&self, f: &Facts<'_>) -> Tri {
        let Some(scores) = f.anomaly else {
            return Tri::False;
        };
        scores
            .values
            .iter()
            .enumerate()
            .any(|(i, v)| self.signals & (1 << i) != 0 && *v > self.above)
            .into()
    }
}

/// Whether a `step_up` rule holds without its condition: the caller owes a
/// step-up from an earlier refusal.
#[inline]
pub(super) fn pending(f: &Facts<'_>) -> bool {
    f.anomaly.is_some_and(|s| s.step_up_pending)
}

#[cfg(test)]
mod tests {
    use super::super::{Facts, Policy, Verdict};
    use crate::behaviour::{Scores, Signal};
    use crate::mcp::method::Method;
    use std::collections::HashMap;

    fn policy(yaml: &str) -> Result<Policy, Vec<String>> {
        let rules: Vec<super::super::RuleConfig> = serde_yaml_ng::from_str(yaml).unwrap();
        Policy::compile(&rules, &HashMap::new(), "r")
    }

    fn facts(scores: Option<&Scores>) -> Facts<'_> {
        Facts {
            principal: None,
            method: Some(Method::ResourcesRead),
            name: None,
            uri: Some("file:///a"),
            arguments: None,
            source_ip: "10.0.0.1".parse().unwrap(),
            now_unix: 0,
            headers: &[],
            content: &[],
            anomaly: scores,
        }
    }

    fn scores(signal: Signal, v: f32) -> Scores {
        let mut s = Scores::default();
        s.values[signal.index()] = v;
        s
    }

    const RULES: &str = "
- name: no-enumeration
  deny: { anomaly: { signals: [burst, enumeration], above: 0.8 } }
- allow: { and: [] }
";

    #[test]
    fn anomaly_is_true_when_a_listed_signal_exceeds_the_threshold() {
        let p = policy(RULES).unwrap();
        let denied = |s: Option<&Scores>| !matches!(p.evaluate(&facts(s)), Verdict::Allow { .. });
        assert!(!denied(None), "not scored");
        assert!(!denied(Some(&Scores::default())));
        assert!(denied(Some(&scores(Signal::Enumeration, 0.9))));
        assert!(denied(Some(&scores(Signal::Burst, 1.0))));
        assert!(!denied(Some(&scores(Signal::Burst, 0.8))), "above, not at");
        assert!(!denied(Some(&scores(Signal::NewTool, 1.0))), "not listed");
        assert!(p.uses_anomaly() && !p.has_step_up());
    }

    #[test]
    fn step_up_refuses_and_then_holds_while_pending() {
        let p = policy(
            "
- name: reauth
  message: unusual activity
  step_up: { anomaly: { signals: [denial_streak], above: 0.5 } }
- allow: { mcp_resource: { starts_with: file:/// } }
",
        )
        .unwrap();
        assert!(p.has_step_up() && p.uses_anomaly());
        assert_eq!(
            p.evaluate(&facts(Some(&scores(Signal::DenialStreak, 0.6)))),
            Verdict::StepUp {
                rule: "reauth",
                message: "unusual activity"
            }
        );
        let calm = Scores::default();
        assert!(matches!(
            p.evaluate(&facts(Some(&calm))),
            Verdict::Allow { .. }
        ));
        let pending = Scores {
            step_up_pending: true,
            ..calm
        };
        assert!(matches!(
            p.evaluate(&facts(Some(&pending))),
            Verdict::StepUp { rule: "reauth", .. }
        ));
    }

    #[test]
    fn bad_anomaly_criteria_and_step_up_rules_are_errors() {
        for (yaml, want) in [
            (
                "- deny: { anomaly: { signals: [], above: 0.5 } }",
                "at least one signal",
            ),
            (
                "- deny: { anomaly: { signals: [boredom], above: 0.5 } }",
                "unknown signal \"boredom\"",
            ),
            (
                "- deny: { anomaly: { signals: [burst], above: 1.0 } }",
                "above 1",
            ),
            (
                "- deny: { anomaly: { signals: [burst], above: -0.1 } }",
                "above -0.1",
            ),
            (
                "- step_up: { rate_limit: { requests: 1, per: 1s } }",
                "a step_up rule takes no rate_limit",
            ),
            (
                "- step_up: { anomaly: { signals: [burst], above: 0.5 } }\n  deny: { and: [] }",
                "exactly one of allow, deny, step_up, use",
            ),
        ] {
            let errs = policy(yaml).unwrap_err();
            assert!(errs.iter().any(|e| e.contains(want)), "{yaml}: {errs:?}");
        }
    }
}
