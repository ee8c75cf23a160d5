//! A small mutation fuzzer for the parsers that take untrusted bytes without a server: JSON and
//! XML resources (parse, then validate), SMART scope strings, and every wearable mapper. No
//! nightly toolchain is needed: `fhirgate-fuzz` runs it for as long as asked
//! (`docs/fuzzing.md`), and the test suite runs a short smoke of each target. The parsers behind
//! the server (search queries, paging cursors, JWT headers) are fuzzed over HTTP by the API tests.
//!
//! A finding is an input on which a target panics; it is written to the findings directory so it
//! can be replayed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One fuzz target: a name and a function that must return (whatever it answers) on any input.
pub struct Target {
    /// Its name (`--target`).
    pub name: &'static str,
    /// The code under test.
    pub run: fn(&[u8]),
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "json-resource",
            run: |b| {
                if let Ok(v) = fhirgate_codec::parse_json(b) {
                    let _ = fhirgate_codec::validate(v);
                }
            },
        },
        Target {
            name: "xml-resource",
            run: |b| {
                if let Ok(v) = fhirgate_codec::xml_to_json(b) {
                    let _ = fhirgate_codec::validate(v);
                }
            },
        },
        Target {
            name: "smart-scopes",
            run: |b| {
                let _ = crate::auth::scopes::ScopeSet::parse(&String::from_utf8_lossy(b));
            },
        },
        Target {
            name: "mapper-apple-health",
            run: |b| map(fhirgate_mappers::Source::AppleHealth, b),
        },
        Target {
            name: "mapper-healthkit",
            run: |b| map(fhirgate_mappers::Source::HealthKit, b),
        },
        Target {
            name: "mapper-fitbit",
            run: |b| map(fhirgate_mappers::Source::Fitbit, b),
        },
        Target {
            name: "mapper-google-fit",
            run: |b| map(fhirgate_mappers::Source::GoogleFit, b),
        },
        Target {
            name: "mapper-oura",
            run: |b| map(fhirgate_mappers::Source::Oura, b),
        },
        Target {
            name: "mapper-withings",
            run: |b| map(fhirgate_mappers::Source::Withings, b),
        },
    ]
}

fn map(source: fhirgate_mappers::Source, bytes: &[u8]) {
    let mut ctx = fhirgate_mappers::MapContext::new("fuzz");
    ctx.default_time_zone = "Europe/Berlin".parse().ok();
    let _ = fhirgate_mappers::map(source, bytes, &ctx);
}

/// One mutation of `input`, drawing on the other seeds for splices.
pub fn mutate(rng: &mut StdRng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = rng.gen_range(1..=4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.gen_range(0..9) {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            // Replace a byte with an interesting one.
            1 if len > 0 => {
                const BYTES: &[u8] = b"\0\x01\x1f\x7f\xff{}[]<>\"'\\&;:,.-+eE0123456789 \t\r\n";
                let i = rng.gen_range(0..len);
                out[i] = BYTES[rng.gen_range(0..BYTES.len())];
            }
            // Delete a range.
            2 if len > 1 => {
                let a = rng.gen_range(0..len);
                let b = (a + rng.gen_range(1..=16)).min(len);
                out.drain(a..b);
            }
            // Duplicate a range (deep nesting, long strings).
            3 if len > 1 => {
                let a = rng.gen_range(0..len);
                let b = (a + rng.gen_range(1..=64)).min(len);
                let piece = out[a..b].to_vec();
                let times = rng.gen_range(1..=32);
                for _ in 0..times {
                    out.splice(b..b, piece.iter().copied());
                }
            }
            // Insert a token that parsers treat specially.
            4 => {
                const TOKENS: &[&str] = &[
                    "{",
                    "}",
                    "[",
                    "]",
                    "\"",
                    "\\u0000",
                    "\\ud800",
                    "1e999",
                    "-0",
                    "null",
                    "true",
                    "<!--",
                    "<![CDATA[",
                    "&#0;",
                    "&amp;",
                    "<!DOCTYPE x [<!ENTITY a \"b\">]>",
                    "\u{feff}",
                    "\u{202e}",
                    "Z",
                    "+14:00",
                    "24:00:00",
                    "2024-02-30",
                    "9999-12-31T23:59:60Z",
                ];
                let t = TOKENS[rng.gen_range(0..TOKENS.len())].as_bytes();
                let i = rng.gen_range(0..=len);
                out.splice(i..i, t.iter().copied());
            }
            // Splice in part of another seed.
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.gen_range(0..seeds.len())];
                if !other.is_empty() {
                    let a = rng.gen_range(0..other.len());
                    let b = (a + rng.gen_range(1..=256)).min(other.len());
                    let i = rng.gen_range(0..=len);
                    out.splice(i..i, other[a..b].iter().copied());
                }
            }
            // Truncate.
            6 if len > 0 => out.truncate(rng.gen_range(0..len)),
            // Swap two bytes.
            7 if len > 1 => {
                let (a, b) = (rng.gen_range(0..len), rng.gen_range(0..len));
                out.swap(a, b);
            }
            // Random bytes.
            _ => {
                let n = rng.gen_range(1..=8);
                let i = rng.gen_range(0..=len);
                let noise: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                out.splice(i..i, noise);
            }
        }
    }
    out.truncate(1 << 20);
    out
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs tried.
    pub runs: u64,
    /// Inputs on which the target panicked.
    pub findings: Vec<Vec<u8>>,
    /// The slowest single input.
    pub slowest: Duration,
}

/// Runs `target` on the seeds and then on mutations of them, until `runs` inputs or `time`
/// (whichever comes first). Deterministic for a given `seed`.
pub fn run(target: &Target, seeds: &[Vec<u8>], runs: u64, time: Duration, seed: u64) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report::default();
    let started = Instant::now();
    let empty = [Vec::new()];
    let pool = if seeds.is_empty() { &empty[..] } else { seeds };
    let mut k = 0u64;
    while report.runs < runs && started.elapsed() < time {
        let input = if (k as usize) < pool.len() {
            pool[k as usize].clone()
        } else {
            let base = &pool[rng.gen_range(0..pool.len())];
            mutate(&mut rng, base, pool)
        };
        k += 1;
        let one = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        report.slowest = report.slowest.max(one.elapsed());
        if outcome.is_err() {
            report.findings.push(input);
        }
        report.runs += 1;
    }
    report
}

/// The seed corpus of a target from the repository: the R4 examples (`tests/fixtures`) for the
/// resource targets, the recorded provider payloads (`mappers/tests/fixtures`) for the mappers,
/// and a few scope strings. `root` is the repository.
pub fn seeds(root: &std::path::Path, target: &str, max_bytes: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut files = |dir: &std::path::Path, ext: &str| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == ext) {
                if let Ok(b) = std::fs::read(&p) {
                    if b.len() <= max_bytes {
                        out.push(b);
                    }
                }
            }
        }
    };
    let fixtures = root.join("mappers/tests/fixtures");
    match target {
        "json-resource" | "xml-resource" => {
            let json = target == "json-resource";
            if let Ok(f) = std::fs::File::open(root.join("tests/fixtures/r4-examples.tgz")) {
                let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
                if let Ok(entries) = archive.entries() {
                    for mut e in entries.flatten() {
                        let mut b = Vec::new();
                        if std::io::Read::read_to_end(&mut e, &mut b).is_ok()
                            && b.len() <= max_bytes
                        {
                            let value = fhirgate_codec::parse_json(&b).ok();
                            match (json, value) {
                                (true, Some(_)) => out.push(b),
                                (false, Some(v)) => {
                                    if let Ok(x) = fhirgate_codec::json_to_xml(&v) {
                                        out.push(x);
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        "smart-scopes" => {
            for s in [
                "system/*.cruds",
                "patient/Observation.rs?category=vital-signs",
                "user/Patient.read launch/patient openid fhirUser offline_access",
                "patient/*.rs patient/Observation.c",
            ] {
                out.push(s.as_bytes().to_vec());
            }
        }
        "mapper-apple-health" => files(&fixtures.join("apple_health"), "xml"),
        "mapper-healthkit" => files(&fixtures.join("healthkit"), "json"),
        "mapper-fitbit" => files(&fixtures.join("fitbit"), "json"),
        "mapper-google-fit" => files(&fixtures.join("googlefit"), "json"),
        "mapper-oura" => files(&fixtures.join("oura"), "json"),
        "mapper-withings" => files(&fixtures.join("withings"), "json"),
        _ => {}
    }
    out
}
