//! The catalog of every schema version this binary can read.
//!
//! Why a catalog: a record carries only the 64-bit fingerprint of the schema it was written
//! with. To read records written by older producers we must know that exact schema, so every
//! version ever shipped stays here (never edit or delete an entry; add `vN+1` instead, adding
//! fields with defaults only). The newest version of each record is the reader schema.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;

/// One schema version as shipped: (record folder, version, schema JSON).
const SHIPPED: &[(&str, u32, &str)] = &[
    ("forecast", 1, include_str!("../avro/forecast/v1.avsc")),
    ("forecast", 2, include_str!("../avro/forecast/v2.avsc")),
    (
        "schedule_config",
        1,
        include_str!("../avro/schedule_config/v1.avsc"),
    ),
    (
        "schedule_config",
        2,
        include_str!("../avro/schedule_config/v2.avsc"),
    ),
    (
        "manual_override",
        1,
        include_str!("../avro/manual_override/v1.avsc"),
    ),
    (
        "schedule_deletion",
        1,
        include_str!("../avro/schedule_deletion/v1.avsc"),
    ),
    (
        "override_cancellation",
        1,
        include_str!("../avro/override_cancellation/v1.avsc"),
    ),
    (
        "telemetry_bucket",
        1,
        include_str!("../avro/telemetry_bucket/v1.avsc"),
    ),
    (
        "schedule_decision",
        1,
        include_str!("../avro/schedule_decision/v1.avsc"),
    ),
    (
        "schedule_decision",
        2,
        include_str!("../avro/schedule_decision/v2.avsc"),
    ),
    (
        "schedule_decision",
        3,
        include_str!("../avro/schedule_decision/v3.avsc"),
    ),
    ("tick", 1, include_str!("../avro/tick/v1.avsc")),
    (
        "config_rejection",
        1,
        include_str!("../avro/config_rejection/v1.avsc"),
    ),
    (
        "dead_letter",
        1,
        include_str!("../avro/dead_letter/v1.avsc"),
    ),
    (
        "journal_entry",
        1,
        include_str!("../avro/journal_entry/v1.avsc"),
    ),
    (
        "journal_batch",
        1,
        include_str!("../avro/journal_batch/v1.avsc"),
    ),
    (
        "journal_batch",
        2,
        include_str!("../avro/journal_batch/v2.avsc"),
    ),
    (
        "ownership_claim",
        1,
        include_str!("../avro/ownership_claim/v1.avsc"),
    ),
    (
        "partition_snapshot",
        1,
        include_str!("../avro/partition_snapshot/v1.avsc"),
    ),
    (
        "partition_snapshot",
        2,
        include_str!("../avro/partition_snapshot/v2.avsc"),
    ),
];

/// A parsed schema version.
#[derive(Debug)]
pub struct SchemaVersion {
    /// Avro full name of the record, e.g. `carbonflow.Forecast`.
    pub full_name: String,
    /// Version number within that record's history (1, 2, ...).
    pub version: u32,
    /// The parsed schema.
    pub schema: Schema,
    /// CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, as the
    /// little-endian `u64` that single-object encoding writes after `C3 01`.
    pub fingerprint: u64,
}

/// All shipped schema versions, with lookups by fingerprint and by record name.
#[derive(Debug)]
pub struct Catalog {
    versions: Vec<SchemaVersion>,
    by_fingerprint: HashMap<u64, usize>,
    current_by_name: HashMap<String, usize>,
}

impl Catalog {
    fn build() -> Self {
        let mut versions = Vec::with_capacity(SHIPPED.len());
        for (folder, version, json) in SHIPPED {
            // The files are compiled in and covered by tests, so a parse failure is a
            // programming error caught by the first test run, never a runtime condition.
            let schema = Schema::parse_str(json).unwrap_or_else(|e| {
                panic!("schemas/avro/{folder}/v{version}.avsc does not parse: {e}")
            });
            let full_name = match &schema {
                Schema::Record(r) => r.name.fullname(None),
                other => panic!(
                    "schemas/avro/{folder}/v{version}.avsc must be a record, found {other:?}"
                ),
            };
            versions.push(SchemaVersion {
                fingerprint: fingerprint_of(&schema),
                full_name,
                version: *version,
                schema,
            });
        }
        let mut by_fingerprint = HashMap::new();
        let mut current_by_name: HashMap<String, usize> = HashMap::new();
        for (i, v) in versions.iter().enumerate() {
            if let Some(prev) = by_fingerprint.insert(v.fingerprint, i) {
                panic!(
                    "{} v{} has the same fingerprint as {} v{}: identical schemas must not be shipped twice",
                    v.full_name, v.version, versions[prev].full_name, versions[prev].version
                );
            }
            let newer = current_by_name
                .get(&v.full_name)
                .is_none_or(|&c| versions[c].version < v.version);
            if newer {
                current_by_name.insert(v.full_name.clone(), i);
            }
        }
        Catalog {
            versions,
            by_fingerprint,
            current_by_name,
        }
    }

    /// The schema version written with `fingerprint`, if this binary knows it.
    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<&SchemaVersion> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|&i| &self.versions[i])
    }

    /// The newest version of the record named `full_name` (the reader schema).
    pub fn current(&self, full_name: &str) -> Option<&SchemaVersion> {
        self.current_by_name
            .get(full_name)
            .map(|&i| &self.versions[i])
    }

    /// Every shipped version, in catalog order.
    pub fn versions(&self) -> &[SchemaVersion] {
        &self.versions
    }
}

/// The process-wide catalog, parsed on first use.
pub fn catalog() -> &'static Catalog {
    static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::build);
    &CATALOG
}

/// Fingerprint as written on the wire: apache-avro's Rabin digest yields the 8 bytes in
/// little-endian order, exactly what the single-object header carries.
pub fn fingerprint_of(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_schema_parses_and_has_a_current_version() {
        let c = catalog();
        assert_eq!(c.versions().len(), SHIPPED.len());
        assert_eq!(c.current("carbonflow.Forecast").map(|v| v.version), Some(2));
        assert_eq!(c.current("carbonflow.Tick").map(|v| v.version), Some(1));
    }

    #[test]
    fn fingerprint_matches_the_avro_specification_vector() {
        // CRC-64-AVRO of the canonical form `"int"`, computed independently with the
        // specification's reference algorithm (EMPTY = 0xc15d213aa4d7a795).
        let s = Schema::parse_str("\"int\"").expect("int schema");
        assert_eq!(fingerprint_of(&s), 0x7275d51a3f395c8f);
    }
}
