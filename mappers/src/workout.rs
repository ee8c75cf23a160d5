//! Workouts as Physical Activity IG activity groups.
//!
//! A workout is one Observation coded 73985-4 "Exercise activity" whose value is the activity
//! type (the source's own code) and whose `hasMember` references one Observation per measured
//! quantity: duration (55411-3), energy (55424-6), distance, steps (55423-8) and mean/maximum
//! heart rate (55425-3/55426-1). Members are written first so every reference resolves.

use crate::fhir::{native_system, Obs, ObsValue};
use crate::metrics::{self, Metric};
use crate::output::Out;
use crate::time::Effective;

/// One workout, with values already in the metric units (min, kcal, m, steps, /min).
#[derive(Debug, Clone)]
pub(crate) struct Workout {
    /// Identifier key of the group; members get `<key>/<metric>`.
    pub(crate) key: String,
    /// Native code of the record kind (e.g. `activities.logId`).
    pub(crate) native_code: String,
    /// The source's own activity type code and display (e.g. `90013`, "Walk").
    pub(crate) activity_code: String,
    pub(crate) activity_display: String,
    pub(crate) effective: Effective,
    pub(crate) device: Option<String>,
    pub(crate) duration_min: Option<f64>,
    pub(crate) energy_kcal: Option<f64>,
    pub(crate) distance_m: Option<f64>,
    pub(crate) steps: Option<f64>,
    pub(crate) hr_mean: Option<f64>,
    pub(crate) hr_max: Option<f64>,
    pub(crate) note: Option<String>,
}

impl Workout {
    /// A workout with no measured values yet.
    pub(crate) fn new(
        key: String,
        native_code: &str,
        activity: (String, String),
        effective: Effective,
    ) -> Self {
        Workout {
            key,
            native_code: native_code.to_owned(),
            activity_code: activity.0,
            activity_display: activity.1,
            effective,
            device: None,
            duration_min: None,
            energy_kcal: None,
            distance_m: None,
            steps: None,
            hr_mean: None,
            hr_max: None,
            note: None,
        }
    }
}

/// Emits the members and then the group Observation.
pub(crate) fn emit(out: &mut Out<'_>, at: &str, w: Workout) {
    let parts: [(&'static Metric, Option<f64>, &str); 6] = [
        (&metrics::EXERCISE_TIME, w.duration_min, "duration"),
        (&metrics::WORKOUT_ENERGY, w.energy_kcal, "energy"),
        (&metrics::DISTANCE, w.distance_m, "distance"),
        (&metrics::STEPS_INTERVAL, w.steps, "steps"),
        (&metrics::WORKOUT_HR_MEAN, w.hr_mean, "hr-mean"),
        (&metrics::WORKOUT_HR_MAX, w.hr_max, "hr-max"),
    ];
    let mut members = Vec::new();
    for (metric, value, name) in parts {
        let Some(v) = value else { continue };
        let obs = Obs::quantity(
            metric,
            format!("{}.{name}", w.native_code),
            format!("{}/{}", w.key, metric.key),
            w.effective.clone(),
            v,
        )
        .with_device(w.device.clone());
        if let Some(id) = out.observation(at, &obs) {
            members.push(id);
        }
    }
    let group = Obs {
        metric: &metrics::WORKOUT,
        native_code: w.native_code,
        key: w.key,
        effective: w.effective,
        value: ObsValue::Concept(
            native_system(out.source),
            w.activity_code,
            w.activity_display,
        ),
        device: w.device,
        members,
        note: w.note,
    };
    out.observation(at, &group);
}
