//! The collector every source mapper writes into.
//!
//! It assigns deterministic ids (see `ids`), emits each Device once before the first
//! Observation that references it, counts skipped records and, for in-memory payloads, turns a
//! second record with the same identifier into a per-record error instead of a silent overwrite.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::fhir::{self, DeviceInfo, Obs};
use crate::ids;
use crate::{MapContext, MapOutput, RecordError, Source};

/// Collects the resources, errors and skip counts of one mapping run.
pub(crate) struct Out<'a> {
    pub(crate) ctx: &'a MapContext,
    pub(crate) source: Source,
    obs_system: String,
    device_system: String,
    pub(crate) resources: Vec<Value>,
    pub(crate) errors: Vec<RecordError>,
    pub(crate) skipped: BTreeMap<String, u64>,
    devices: HashSet<String>,
    /// Observation ids seen so far; `None` when streaming (memory must stay constant).
    observations: Option<HashSet<String>>,
    /// Results a source mapper remembers between records (the Device id of an Apple source and
    /// device string). Bounded by the number of distinct devices in a payload.
    pub(crate) memo: std::collections::HashMap<String, Option<String>>,
}

impl<'a> Out<'a> {
    /// A collector that also rejects duplicate Observation identifiers.
    pub(crate) fn new(ctx: &'a MapContext, source: Source) -> Self {
        Out {
            ctx,
            source,
            obs_system: ids::observation_system(source),
            device_system: ids::device_system(source),
            resources: Vec::new(),
            errors: Vec::new(),
            skipped: BTreeMap::new(),
            devices: HashSet::new(),
            observations: Some(HashSet::new()),
            memo: std::collections::HashMap::new(),
        }
    }

    /// A collector for streams: no per-Observation memory.
    pub(crate) fn streaming(ctx: &'a MapContext, source: Source) -> Self {
        Out {
            observations: None,
            ..Out::new(ctx, source)
        }
    }

    /// The finished output.
    pub(crate) fn finish(self) -> MapOutput {
        MapOutput {
            resources: self.resources,
            errors: self.errors,
            skipped: self.skipped,
        }
    }

    /// Records a per-record error.
    pub(crate) fn error(&mut self, e: RecordError) {
        self.errors.push(e);
    }

    /// Counts a record that is deliberately not mapped.
    pub(crate) fn skip(&mut self, reason: impl Into<String>) {
        *self.skipped.entry(reason.into()).or_insert(0) += 1;
    }

    /// The logical id the Observation with identifier `key` gets.
    pub(crate) fn observation_id(&self, key: &str) -> String {
        ids::logical_id(&self.ctx.patient_id, &self.obs_system, key)
    }

    /// A key for a record the provider gives no id: `patient|device|metric|start|end`.
    pub(crate) fn composite_key(
        &self,
        device: &str,
        metric: &str,
        effective: &crate::time::Effective,
    ) -> String {
        format!(
            "{}|{}|{}|{}",
            self.ctx.patient_id,
            device,
            metric,
            effective.key()
        )
    }

    /// Emits the Device (once) and returns its logical id.
    pub(crate) fn device(&mut self, info: &DeviceInfo) -> String {
        let id = ids::logical_id(&self.ctx.patient_id, &self.device_system, &info.key);
        if self.devices.insert(id.clone()) {
            let d = fhir::device(&self.ctx.patient_id, &id, &self.device_system, info);
            self.resources.push(d);
        }
        id
    }

    /// Emits an Observation and returns its logical id, or records an error when an earlier
    /// record of this payload had the same identifier.
    pub(crate) fn observation(&mut self, at: &str, obs: &Obs) -> Option<String> {
        let id = self.observation_id(&obs.key);
        if let Some(seen) = &mut self.observations {
            if !seen.insert(id.clone()) {
                self.errors.push(RecordError {
                    location: at.to_owned(),
                    reason: format!(
                        "duplicate {} record: an earlier record has the same identifier",
                        obs.metric.key
                    ),
                });
                return None;
            }
        }
        let v = fhir::observation(
            self.source,
            &self.ctx.patient_id,
            &id,
            &self.obs_system,
            obs,
        );
        self.resources.push(v);
        Some(id)
    }
}
