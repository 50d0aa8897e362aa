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
