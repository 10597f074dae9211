//! Avro single-object encoding with writer→reader schema resolution.
//!
//! Layout of every record value on every topic (Avro specification, "single object
//! encoding"): `C3 01`, then the 8-byte little-endian CRC-64-AVRO fingerprint of the
//! schema it was written with, then the Avro binary datum.
//!
//! Encoding always uses the newest schema of the record. Decoding looks the fingerprint
//! up in the [catalog](crate::catalog), reads the datum with that (writer) schema and
//! resolves it to the newest (reader) schema, so fields added later get their defaults.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{LazyLock, Once};

use apache_avro::from_value;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::catalog::{SchemaVersion, catalog};

/// Length of the single-object header: 2 marker bytes + 8 fingerprint bytes.
pub const HEADER_LEN: usize = 10;
const MARKER: [u8; 2] = [0xC3, 0x01];

/// Largest allocation a decoded length prefix may ask for. Kafka records are far smaller
/// (1 MiB by default); without this bound a corrupt length could make apache-avro try
/// to allocate up to its 512 MiB default before noticing the data is not there.
const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// A Rust type that is the serde mirror of a record in the catalog.
pub trait AvroRecord: Serialize + DeserializeOwned {
    /// Avro full name of the record, e.g. `carbonflow.Forecast`.
    const FULL_NAME: &'static str;
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the header needs.
    #[error(
        "record is {len} bytes long: too short for the 10-byte single-object header (C3 01 + 8-byte schema fingerprint)"
    )]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first two bytes are not the single-object marker.
    #[error(
        "record starts with {found:02X?}, expected the Avro single-object marker [C3, 01] (is this a Confluent-framed or plain-JSON record?)"
    )]
    BadMarker {
        /// Bytes found.
        found: [u8; 2],
    },
    /// The fingerprint is not in this binary's catalog.
    #[error(
        "unknown schema fingerprint {fingerprint:016x}: not one of the {known} schema versions this binary knows (written by a newer carbonflow, or not a carbonflow record)"
    )]
    UnknownFingerprint {
        /// Fingerprint found in the header.
        fingerprint: u64,
        /// Number of versions in the catalog.
        known: usize,
    },
    /// The record is another type than the one asked for.
    #[error("expected a {expected} record, found a {found} (schema version {version})")]
    WrongRecord {
        /// Record type asked for.
        expected: &'static str,
        /// Record type found.
        found: String,
        /// Its schema version.
        version: u32,
    },
    /// The body ended before the datum was complete.
    #[error("{record} v{version} record is truncated: the datum ends early ({detail})")]
    Truncated {
        /// Record type.
        record: String,
        /// Writer schema version.
        version: u32,
        /// What the reader was doing.
        detail: String,
    },
    /// The datum does not fit the writer schema, or cannot be resolved to the reader.
    #[error("{record} v{version} record does not match its schema: {detail}")]
    SchemaMismatch {
        /// Record type.
        record: String,
        /// Writer schema version.
        version: u32,
        /// Details from the Avro library.
        detail: String,
    },
    /// Bytes left over after the datum.
    #[error("{record} v{version} record has {extra} unexpected bytes after the datum")]
    TrailingBytes {
        /// Record type.
        record: String,
        /// Writer schema version.
        version: u32,
        /// Bytes left.
        extra: usize,
    },
    /// The value cannot be written with the record's schema (a bug in the Rust mirror).
    #[error("cannot encode a {record}: {detail}")]
    Encode {
        /// Record type.
        record: &'static str,
        /// Details from the Avro library.
        detail: String,
    },
}

impl CodecError {
    /// Every class name [`CodecError::kind`] gives for a record that failed to decode
    /// (all but `encode`), so that metrics can start each series at zero.
    pub const DECODE_KINDS: [&'static str; 7] = [
        "too_short",
        "bad_marker",
        "unknown_fingerprint",
        "wrong_record",
        "truncated",
        "schema_mismatch",
        "trailing_bytes",
    ];

    /// Bounded class name, for metric labels and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "too_short",
            Self::BadMarker { .. } => "bad_marker",
            Self::UnknownFingerprint { .. } => "unknown_fingerprint",
            Self::WrongRecord { .. } => "wrong_record",
            Self::Truncated { .. } => "truncated",
            Self::SchemaMismatch { .. } => "schema_mismatch",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::Encode { .. } => "encode",
        }
    }
}

fn limit_allocations() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    });
}

/// Datum writers and readers, built once per schema version.
///
/// Why: building one resolves every named type of its schema, which costs more than
/// encoding or decoding a small record; the processor does both for every input.
/// Building cannot fail for a schema that parsed, but an error is kept (not a panic) so
/// it surfaces as the codec error of the record that needed it.
struct Codecs {
    /// By record full name: the current version and its writer.
    writers: HashMap<
        &'static str,
        (
            &'static SchemaVersion,
            Result<GenericDatumWriter<'static>, String>,
        ),
    >,
    /// By writer fingerprint: a reader resolving that version to the current one.
    readers: HashMap<u64, Result<GenericDatumReader<'static>, String>>,
}

fn codecs() -> &'static Codecs {
    static CODECS: LazyLock<Codecs> = LazyLock::new(|| {
        let catalog = catalog();
        let mut writers = HashMap::new();
        let mut readers = HashMap::new();
        for v in catalog.versions() {
            let Some(current) = catalog.current(&v.full_name) else {
                continue;
            };
            let reader = if std::ptr::eq(v, current) {
                let writer = GenericDatumWriter::builder(&v.schema)
                    .build()
                    .map_err(|e| e.to_string());
                writers.insert(v.full_name.as_str(), (v, writer));
                // Written with the reader's own schema: nothing to resolve.
                GenericDatumReader::builder(&v.schema).build()
            } else {
                GenericDatumReader::builder(&v.schema)
                    .reader_schema(&current.schema)
                    .build()
            };
            readers.insert(v.fingerprint, reader.map_err(|e| e.to_string()));
        }
        Codecs { writers, readers }
    });
    &CODECS
}

/// Encode `record` with the newest schema of its type, in single-object encoding.
pub fn encode<T: AvroRecord>(record: &T) -> Result<Vec<u8>, CodecError> {
    let err = |detail: String| CodecError::Encode {
        record: T::FULL_NAME,
        detail,
    };
    let (current, writer) = codecs()
        .writers
        .get(T::FULL_NAME)
        .ok_or_else(|| err("record type is not in the schema catalog".into()))?;
    let writer = writer.as_ref().map_err(|e| err(e.clone()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&current.fingerprint.to_le_bytes());
    // Serialized straight against the schema (no intermediate `Value`); the golden
    // fixtures pin the bytes.
    writer
        .write_ser(&mut out, record)
        .map_err(|e| err(e.to_string()))?;
    Ok(out)
}

/// The writer schema version named by a record's header.
pub fn writer_schema(bytes: &[u8]) -> Result<&'static SchemaVersion, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    if bytes[..2] != MARKER {
        return Err(CodecError::BadMarker {
            found: [bytes[0], bytes[1]],
        });
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    let fingerprint = u64::from_le_bytes(fp);
    catalog()
        .by_fingerprint(fingerprint)
        .ok_or(CodecError::UnknownFingerprint {
            fingerprint,
            known: catalog().versions().len(),
        })
}

/// Avro full name of the record in `bytes` (for topics that carry several types).
pub fn record_name(bytes: &[u8]) -> Result<&'static str, CodecError> {
    writer_schema(bytes).map(|v| v.full_name.as_str())
}

/// The error for a record that is not one of the types a reader accepts; `expected` says
/// what it accepts (for readers of several types, where [`decode`] cannot say it).
pub fn wrong_record(expected: &'static str, bytes: &[u8]) -> CodecError {
    match writer_schema(bytes) {
        Ok(writer) => CodecError::WrongRecord {
            expected,
            found: writer.full_name.clone(),
            version: writer.version,
        },
        Err(e) => e,
    }
}

/// Decode a single-object-encoded record into `T`, resolving older schema versions.
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> Result<T, CodecError> {
    limit_allocations();
    let writer = writer_schema(bytes)?;
    if writer.full_name != T::FULL_NAME {
        return Err(CodecError::WrongRecord {
            expected: T::FULL_NAME,
            found: writer.full_name.clone(),
            version: writer.version,
        });
    }
    let mismatch = |detail: String| CodecError::SchemaMismatch {
        record: writer.full_name.clone(),
        version: writer.version,
        detail,
    };
    let reader_version = catalog()
        .current(T::FULL_NAME)
        .ok_or_else(|| mismatch("record type has no reader schema in the catalog".into()))?;
    let datum_reader = codecs()
        .readers
        .get(&writer.fingerprint)
        .ok_or_else(|| mismatch("record type has no reader schema in the catalog".into()))?
        .as_ref()
        .map_err(|e| mismatch(e.clone()))?;
    let body = &bytes[HEADER_LEN..];
    let mut cursor = StrictReader { rest: body };
    let read_error = |e: apache_avro::Error| {
        if is_end_of_input(&e) {
            CodecError::Truncated {
                record: writer.full_name.clone(),
                version: writer.version,
                detail: e.to_string(),
            }
        } else {
            mismatch(e.to_string())
        }
    };
    // Records written with the current schema are deserialized straight from the bytes;
    // older versions go through a `Value`, which resolves them to the current schema.
    let record = if std::ptr::eq(writer, reader_version) {
        datum_reader
            .read_deser::<T>(&mut cursor)
            .map_err(read_error)?
    } else {
        let value = datum_reader.read_value(&mut cursor).map_err(read_error)?;
        from_value::<T>(&value).map_err(|e| mismatch(e.to_string()))?
    };
    let extra = cursor.rest.len();
    if extra != 0 {
        return Err(CodecError::TrailingBytes {
            record: writer.full_name.clone(),
            version: writer.version,
            extra,
        });
    }
    Ok(record)
}

/// Marker carried by the I/O error [`StrictReader`] returns at the end of the record.
#[derive(Debug)]
struct EndOfRecord;

impl std::fmt::Display for EndOfRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("end of record reached")
    }
}

impl std::error::Error for EndOfRecord {}

/// A byte-slice reader whose end is an error, never a short read.
///
/// Why: apache-avro decodes an end-of-input (`UnexpectedEof`) met while reading a union
/// index as the union's first branch (`null`), so a record cut just before a trailing
/// optional field would decode "successfully" with that field silently null. Reporting
/// the end as a distinct error makes every truncation visible.
struct StrictReader<'a> {
    rest: &'a [u8],
}

impl Read for StrictReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.rest.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, EndOfRecord));
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// True when the Avro error was caused by running out of input.
fn is_end_of_input(err: &apache_avro::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::UnexpectedEof
                || io.get_ref().is_some_and(|inner| inner.is::<EndOfRecord>());
        }
        source = e.source();
    }
    false
}
