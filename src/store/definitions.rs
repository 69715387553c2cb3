//! Durable definitions (exchanges, queues, bindings) of each vhost, one JSON file per vhost.
//!
//! A file is replaced atomically: written to a temporary file, fsync'd, renamed over the old one,
//! and the directory fsync'd, so a crash leaves either the old or the new file, never half of one.
//! Argument tables are kept as base64 of their AMQP encoding: exact for every field type.

use base64::Engine;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use switchboard_amqp::{decode_table, encode_table, FieldTable};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VHostDefinitions {
    pub vhost: String,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    /// The queue's id in the message log (unique per incarnation: a queue deleted and declared
    /// again gets a new one, so old records never reach the new queue).
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub source: String,
    /// "queue" or "exchange".
    pub destination_type: String,
    pub destination: String,
    pub routing_key: String,
    pub arguments: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error("cannot read definitions {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("definitions file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write definitions {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Encodes an argument table for a definitions file.
pub fn table_text(t: &FieldTable) -> String {
    let mut b = BytesMut::new();
    encode_table(&mut b, t);
    base64::engine::general_purpose::STANDARD.encode(&b)
}

/// Decodes an argument table from a definitions file.
pub fn text_table(s: &str) -> Result<FieldTable, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| e.to_string())?;
    let mut b = &bytes[..];
    decode_table(&mut b).map_err(|e| e.to_string())
}

/// The file holding `vhost`'s definitions (the name hex-encoded: vhost names may hold `/`).
pub fn path_for(dir: &Path, vhost: &str) -> PathBuf {
    let hex: String = vhost.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("vhost-{hex}.json"))
}

/// Reads `vhost`'s definitions; empty ones when there is no file yet.
pub fn load(dir: &Path, vhost: &str) -> Result<VHostDefinitions, DefinitionsError> {
    let path = path_for(dir, vhost);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(VHostDefinitions {
                vhost: vhost.to_owned(),
                ..Default::default()
            })
        }
        Err(source) => return Err(DefinitionsError::Read { path, source }),
    };
    serde_json::from_slice(&text).map_err(|e| DefinitionsError::Invalid {
        path,
        reason: e.to_string(),
    })
}

/// Replaces `defs.vhost`'s definitions file atomically.
pub fn save(dir: &Path, defs: &VHostDefinitions) -> Result<(), DefinitionsError> {
    let path = path_for(dir, &defs.vhost);
    let err = |source| DefinitionsError::Write {
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec_pretty(defs).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_amqp::FieldValue;

    #[test]
    fn round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-defs-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut args = FieldTable::new();
        args.insert("x-max-priority".into(), FieldValue::U8(10));
        let defs = VHostDefinitions {
            vhost: "a/b".into(),
            exchanges: vec![],
            queues: vec![QueueDef {
                name: "q".into(),
                id: 9,
                auto_delete: false,
                arguments: table_text(&args),
            }],
            bindings: vec![],
        };
        save(&dir, &defs).expect("save");
        let back = load(&dir, "a/b").expect("load");
        assert_eq!(back, defs);
        assert_eq!(text_table(&back.queues[0].arguments), Ok(args));
        assert!(load(&dir, "none").expect("empty").queues.is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
