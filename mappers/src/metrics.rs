//! The metrics the mappers produce: LOINC code, UCUM unit and data class of each.
//!
//! Codes come from the mapping table in docs/wearable-mapping.md §2a. Metrics without a good
//! LOINC code (RMSSD, VO2max, distance, temperature deviation, scores) carry only our own coding
//! in `https://fhirgate.org/CodeSystem/metric`, next to the source's native coding.

/// CodeSystem of our own metric codes.
pub(crate) const METRIC_SYSTEM: &str = "https://fhirgate.org/CodeSystem/metric";

/// The consent data class of an Observation (DESIGN.md, "Consent").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataClass {
    /// `observation-category#vital-signs`.
    VitalSigns,
    /// `observation-category#vital-signs` plus `data-class#body-measurement` (weight, height, BMI).
    VitalBody,
    /// `data-class#body-measurement` only (body composition).
    Body,
    /// `observation-category#activity` (plus the PA IG `PhysicalActivity` code).
    Activity,
    /// `data-class#sleep`.
    Sleep,
    /// `observation-category#laboratory` (glucose).
    Laboratory,
}

/// A UCUM unit: the code and a human-readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unit {
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
}

/// A metric we map.
#[derive(Debug)]
pub(crate) struct Metric {
    /// Our code in [`METRIC_SYSTEM`]; also used in identifier keys.
    pub(crate) key: &'static str,
    /// Text for `Observation.code.text` and our coding's display.
    pub(crate) display: &'static str,
    /// LOINC codes (code, display), most specific last; empty when none fits.
    pub(crate) loinc: &'static [(&'static str, &'static str)],
    /// The unit values are normalised to (ignored for coded and component values).
    pub(crate) unit: Unit,
    pub(crate) class: DataClass,
}

const PER_MIN: Unit = Unit {
    code: "/min",
    display: "beats/minute",
};
const BREATHS: Unit = Unit {
    code: "/min",
    display: "breaths/minute",
};
const MS: Unit = Unit {
    code: "ms",
    display: "ms",
};
const MMHG: Unit = Unit {
    code: "mm[Hg]",
    display: "mmHg",
};
const PERCENT: Unit = Unit {
    code: "%",
    display: "%",
};
const CEL: Unit = Unit {
    code: "Cel",
    display: "°C",
};
const KG: Unit = Unit {
    code: "kg",
    display: "kg",
};
const CM: Unit = Unit {
    code: "cm",
    display: "cm",
};
const M: Unit = Unit {
    code: "m",
    display: "m",
};
const KCAL: Unit = Unit {
    code: "kcal",
    display: "kcal",
};
const MIN: Unit = Unit {
    code: "min",
    display: "min",
};
const STEPS: Unit = Unit {
    code: "{steps}",
    display: "steps",
};
const SCORE: Unit = Unit {
    code: "{score}",
    display: "score",
};
/// Dimensionless, used where a metric has no quantity value.
pub(crate) const NONE: Unit = Unit {
    code: "1",
    display: "1",
};

macro_rules! metric {
    ($name:ident, $key:literal, $display:literal, [$(($c:literal, $d:literal)),*], $unit:expr, $class:ident) => {
        pub(crate) static $name: Metric = Metric {
            key: $key,
            display: $display,
            loinc: &[$(($c, $d)),*],
            unit: $unit,
            class: DataClass::$class,
        };
    };
}

metric!(
    HEART_RATE,
    "heart-rate",
    "Heart rate",
    [("8867-4", "Heart rate")],
    PER_MIN,
    VitalSigns
);
metric!(
    RESTING_HEART_RATE,
    "resting-heart-rate",
    "Resting heart rate",
    [("40443-4", "Heart rate --resting")],
    PER_MIN,
    VitalSigns
);
metric!(
    HRV_SDNN,
    "hrv-sdnn",
    "Heart rate variability (SDNN)",
    [(
        "80404-7",
        "R-R interval.standard deviation (Heart rate variability)"
    )],
    MS,
    VitalSigns
);
metric!(
    HRV_RMSSD,
    "hrv-rmssd",
    "Heart rate variability (RMSSD)",
    [],
    MS,
    VitalSigns
);
metric!(
    BLOOD_PRESSURE,
    "blood-pressure",
    "Blood pressure",
    [("85354-9", "Blood pressure panel with all children optional")],
    MMHG,
    VitalSigns
);
metric!(
    SYSTOLIC,
    "systolic-blood-pressure",
    "Systolic blood pressure",
    [("8480-6", "Systolic blood pressure")],
    MMHG,
    VitalSigns
);
metric!(
    DIASTOLIC,
    "diastolic-blood-pressure",
    "Diastolic blood pressure",
    [("8462-4", "Diastolic blood pressure")],
    MMHG,
    VitalSigns
);
metric!(
    SPO2,
    "oxygen-saturation",
    "Oxygen saturation",
    [
        ("2708-6", "Oxygen saturation in Arterial blood"),
        (
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry"
        )
    ],
    PERCENT,
    VitalSigns
);
metric!(
    RESPIRATORY_RATE,
    "respiratory-rate",
    "Respiratory rate",
    [("9279-1", "Respiratory rate")],
    BREATHS,
    VitalSigns
);
metric!(
    BODY_TEMPERATURE,
    "body-temperature",
    "Body temperature",
    [("8310-5", "Body temperature")],
    CEL,
    VitalSigns
);
metric!(
    SKIN_TEMPERATURE,
    "skin-temperature",
    "Skin temperature",
    [("39106-0", "Temperature of Skin")],
    CEL,
    VitalSigns
);
metric!(
    TEMPERATURE_DEVIATION,
    "temperature-deviation",
    "Body temperature deviation from baseline",
    [],
    CEL,
    VitalSigns
);
metric!(
    BODY_WEIGHT,
    "body-weight",
    "Body weight",
    [("29463-7", "Body weight")],
    KG,
    VitalBody
);
metric!(
    BODY_HEIGHT,
    "body-height",
    "Body height",
    [("8302-2", "Body height")],
    CM,
    VitalBody
);
metric!(
    BMI,
    "bmi",
    "Body mass index",
    [("39156-5", "Body mass index (BMI) [Ratio]")],
    Unit {
        code: "kg/m2",
        display: "kg/m2"
    },
    VitalBody
);
metric!(
    BODY_FAT,
    "body-fat-percentage",
    "Body fat percentage",
    [("41982-0", "Percentage of body fat Measured")],
    PERCENT,
    Body
);
metric!(FAT_MASS, "fat-mass", "Fat mass", [], KG, Body);
metric!(
    FAT_FREE_MASS,
    "fat-free-mass",
    "Fat-free (lean) mass",
    [],
    KG,
    Body
);
metric!(MUSCLE_MASS, "muscle-mass", "Muscle mass", [], KG, Body);
metric!(HYDRATION, "hydration", "Body water mass", [], KG, Body);
metric!(BONE_MASS, "bone-mass", "Bone mass", [], KG, Body);
metric!(
    PULSE_WAVE_VELOCITY,
    "pulse-wave-velocity",
    "Pulse wave velocity",
    [],
    Unit {
        code: "m/s",
        display: "m/s"
    },
    VitalSigns
);
metric!(
    VO2MAX,
    "vo2max",
    "VO2max",
    [],
    Unit {
        code: "mL/min/kg",
        display: "mL/min/kg"
    },
    Activity
);
metric!(
    STEPS_INTERVAL,
    "steps",
    "Steps",
    [("55423-8", "Number of steps in unspecified time Pedometer")],
    STEPS,
    Activity
);
metric!(
    STEPS_DAILY,
    "steps-daily",
    "Steps per day",
    [("41950-7", "Number of steps in 24 hour Measured")],
    Unit {
        code: "/d",
        display: "steps/day"
    },
    Activity
);
metric!(DISTANCE, "distance", "Distance", [], M, Activity);
metric!(
    ACTIVE_ENERGY,
    "active-energy",
    "Active energy burned",
    [("41981-2", "Calories burned")],
    KCAL,
    Activity
);
metric!(
    TOTAL_ENERGY,
    "total-energy",
    "Total energy burned (including basal)",
    [("41981-2", "Calories burned")],
    KCAL,
    Activity
);
metric!(
    BASAL_ENERGY,
    "basal-energy",
    "Basal energy burned",
    [],
    KCAL,
    Activity
);
metric!(
    TOTAL_ENERGY_DAILY,
    "total-energy-daily",
    "Total energy burned per day",
    [("41979-6", "Calories burned in 24 hour Calculated")],
    Unit {
        code: "kcal/d",
        display: "kcal/day"
    },
    Activity
);
metric!(
    EXERCISE_TIME,
    "exercise-time",
    "Exercise duration",
    [("55411-3", "Exercise duration")],
    MIN,
    Activity
);
metric!(
    MODERATE_MINUTES,
    "moderate-activity-time",
    "Moderate physical activity duration",
    [],
    MIN,
    Activity
);
metric!(
    VIGOROUS_MINUTES,
    "vigorous-activity-time",
    "Vigorous physical activity duration",
    [],
    MIN,
    Activity
);
metric!(
    LIGHT_MINUTES,
    "light-activity-time",
    "Light physical activity duration",
    [],
    MIN,
    Activity
);
metric!(
    STAND_HOURS,
    "stand-hours",
    "Hours with standing",
    [],
    Unit {
        code: "h",
        display: "h"
    },
    Activity
);
metric!(
    WORKOUT,
    "workout",
    "Exercise activity",
    [("73985-4", "Exercise activity")],
    NONE,
    Activity
);
metric!(
    WORKOUT_ENERGY,
    "workout-energy",
    "Calories burned during exercise",
    [("55424-6", "Calories burned in unspecified time Pedometer")],
    KCAL,
    Activity
);
metric!(
    WORKOUT_HR_MEAN,
    "workout-heart-rate-mean",
    "Mean heart rate during exercise",
    [("55425-3", "Heart rate unspecified time mean")],
    PER_MIN,
    Activity
);
metric!(
    WORKOUT_HR_MAX,
    "workout-heart-rate-max",
    "Maximum heart rate during exercise",
    [("55426-1", "Heart rate unspecified time maximum")],
    PER_MIN,
    Activity
);
metric!(
    SLEEP_DURATION,
    "sleep-duration",
    "Sleep duration",
    [("93832-4", "Sleep duration")],
    MIN,
    Sleep
);
metric!(
    DEEP_SLEEP,
    "deep-sleep-duration",
    "Deep sleep duration",
    [("93831-6", "Deep sleep duration")],
    MIN,
    Sleep
);
metric!(
    LIGHT_SLEEP,
    "light-sleep-duration",
    "Light sleep duration",
    [("93830-8", "Light sleep duration")],
    MIN,
    Sleep
);
metric!(
    REM_SLEEP,
    "rem-sleep-duration",
    "REM sleep duration",
    [("93829-0", "REM sleep duration")],
    MIN,
    Sleep
);
metric!(
    AWAKE_DURATION,
    "awake-duration",
    "Time awake during sleep period",
    [],
    MIN,
    Sleep
);
metric!(TIME_IN_BED, "time-in-bed", "Time in bed", [], MIN, Sleep);
metric!(
    SLEEP_LATENCY,
    "sleep-latency",
    "Time to fall asleep",
    [],
    MIN,
    Sleep
);
metric!(SLEEP_STAGE, "sleep-stage", "Sleep stage", [], NONE, Sleep);
metric!(SLEEP_SCORE, "sleep-score", "Sleep score", [], SCORE, Sleep);
metric!(
    ACTIVITY_SCORE,
    "activity-score",
    "Activity score",
    [],
    SCORE,
    Activity
);
metric!(
    READINESS_SCORE,
    "readiness-score",
    "Readiness score",
    [],
    SCORE,
    VitalSigns
);
metric!(
    BLOOD_GLUCOSE,
    "blood-glucose",
    "Blood glucose",
    [(
        "41653-7",
        "Glucose [Mass/volume] in Capillary blood by Glucometer"
    )],
    Unit {
        code: "mg/dL",
        display: "mg/dL"
    },
    Laboratory
);

/// CodeSystem of our sleep-stage codes (the value of [`SLEEP_STAGE`] Observations).
pub(crate) const SLEEP_STAGE_SYSTEM: &str = "https://fhirgate.org/CodeSystem/sleep-stage";

/// A sleep stage, normalised across providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    InBed,
    Asleep,
    Awake,
    Light,
    Deep,
    Rem,
    Restless,
    OutOfBed,
}

impl Stage {
    /// (code, display) in [`SLEEP_STAGE_SYSTEM`].
    pub(crate) fn coding(self) -> (&'static str, &'static str) {
        match self {
            Stage::InBed => ("in-bed", "In bed"),
            Stage::Asleep => ("asleep", "Asleep (stage unspecified)"),
            Stage::Awake => ("awake", "Awake"),
            Stage::Light => ("light", "Light sleep"),
            Stage::Deep => ("deep", "Deep sleep"),
            Stage::Rem => ("rem", "REM sleep"),
            Stage::Restless => ("restless", "Restless"),
            Stage::OutOfBed => ("out-of-bed", "Out of bed"),
        }
    }
}
