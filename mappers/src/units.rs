//! Unit normalisation to the UCUM unit of each metric (docs/wearable-mapping.md §3 "Units").
//!
//! Providers write units their own way (`count/min`, `lb`, `degF`, `mi`, `mL/min·kg`); the
//! functions here convert a value in such a unit to the metric's UCUM unit, or say the unit is
//! not one we know (a per-record error, never a guess).

/// The physical dimension a metric's unit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dimension {
    /// Mass, normalised to kg.
    Mass,
    /// Body height, normalised to cm.
    Height,
    /// Distance, normalised to m.
    Distance,
    /// Energy, normalised to kcal.
    Energy,
    /// Absolute temperature, normalised to Cel.
    Temperature,
    /// Duration, normalised to min.
    Minutes,
    /// Short duration, normalised to ms.
    Millis,
    /// Rates per minute (`count/min`, `bpm`, `/min`).
    PerMinute,
    /// Percentages; `fraction` says the source writes 0–1 for 0–100 %.
    Percent,
    /// Pressure, mm[Hg].
    Pressure,
    /// Plain counts (`count`, steps).
    Count,
    /// Concentration of glucose, normalised to mg/dL.
    Glucose,
    /// VO2max, mL/min/kg.
    Vo2,
}

/// Converts `value` given in the provider's `unit` to the normalised unit of `dim`.
///
/// Returns `None` when the unit does not belong to the dimension.
pub(crate) fn normalise(dim: Dimension, value: f64, unit: &str) -> Option<f64> {
    let u = unit.trim();
    let factor = match dim {
        Dimension::Mass => match u {
            "kg" => 1.0,
            "g" => 0.001,
            "lb" | "lbs" | "[lb_av]" => 0.453_592_37,
            "st" | "[stone_av]" => 6.350_293_18,
            "oz" | "[oz_av]" => 0.028_349_523_125,
            _ => return None,
        },
        Dimension::Height => match u {
            "cm" => 1.0,
            "m" => 100.0,
            "mm" => 0.1,
            "in" | "[in_i]" => 2.54,
            "ft" | "[ft_i]" => 30.48,
            _ => return None,
        },
        Dimension::Distance => match u {
            "m" => 1.0,
            "km" => 1000.0,
            "cm" => 0.01,
            "mi" | "[mi_i]" => 1609.344,
            "yd" | "[yd_i]" => 0.9144,
            "ft" | "[ft_i]" => 0.3048,
            _ => return None,
        },
        Dimension::Energy => match u {
            "kcal" | "Cal" => 1.0,
            "kJ" => 1.0 / 4.184,
            "cal" => 0.001,
            _ => return None,
        },
        Dimension::Temperature => {
            return match u {
                "degC" | "Cel" | "°C" => Some(value),
                "degF" | "[degF]" | "°F" => Some((value - 32.0) * 5.0 / 9.0),
                _ => None,
            }
        }
        Dimension::Minutes => match u {
            "min" => 1.0,
            "s" => 1.0 / 60.0,
            "h" | "hr" => 60.0,
            "ms" => 1.0 / 60_000.0,
            "d" => 1440.0,
            _ => return None,
        },
        Dimension::Millis => match u {
            "ms" => 1.0,
            "s" => 1000.0,
            _ => return None,
        },
        Dimension::PerMinute => match u {
            "count/min" | "/min" | "bpm" | "{beats}/min" | "{breaths}/min" => 1.0,
            "count/s" | "Hz" => 60.0,
            _ => return None,
        },
        Dimension::Percent => match u {
            "%" => 1.0,
            _ => return None,
        },
        Dimension::Pressure => match u {
            "mmHg" | "mm[Hg]" => 1.0,
            _ => return None,
        },
        Dimension::Count => match u {
            "count" | "" | "{steps}" | "steps" => 1.0,
            _ => return None,
        },
        Dimension::Glucose => match u {
            "mg/dL" => 1.0,
            // Glucose: 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol).
            "mmol/L" | "mmol<180.1558800000541>/L" => 18.016,
            _ => return None,
        },
        Dimension::Vo2 => match u {
            "mL/min·kg" | "mL/(kg·min)" | "mL/kg/min" | "mL/min/kg" | "ml/(kg*min)" => 1.0,
            _ => return None,
        },
    };
    Some(value * factor)
}

/// Rounds a converted value so unit arithmetic does not leak float noise into the output
/// (`0.97 × 100` must be `97`, not `97.00000000000001`).
pub(crate) fn tidy(value: f64, decimals: i32) -> f64 {
    if !value.is_finite() {
        return value;
    }
    let p = 10f64.powi(decimals);
    let scaled = (value * p).round();
    // Up to 22 decimals 10^d is exact, and an integer below 2^53 divided by it is correctly
    // rounded: already the double nearest the decimal, what the text round trip below gives.
    if (0..=22).contains(&decimals) && scaled.abs() < 9.0e15 {
        return scaled / p;
    }
    let r = scaled / p;
    // Going through the shortest decimal text removes representation error of the division.
    format!("{r:.*}", decimals.max(0) as usize)
        .parse()
        .unwrap_or(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pounds_become_kilograms_and_metres_become_centimetres() {
        assert_eq!(
            tidy(normalise(Dimension::Mass, 160.0, "lb").unwrap(), 3),
            72.575
        );
        assert_eq!(
            tidy(normalise(Dimension::Height, 1.8288, "m").unwrap(), 2),
            182.88
        );
        assert_eq!(
            tidy(normalise(Dimension::Temperature, 98.6, "degF").unwrap(), 2),
            37.0
        );
        assert!(normalise(Dimension::Mass, 1.0, "furlong").is_none());
    }

    #[test]
    fn tidy_removes_float_noise() {
        assert_eq!(tidy(0.97 * 100.0, 6), 97.0);
        assert_eq!(tidy(0.1 + 0.2, 6), 0.3);
    }
}
