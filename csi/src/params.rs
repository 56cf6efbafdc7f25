//! StorageClass parameters (`CreateVolume`, `GetCapacity`), mutable parameters
//! (`ControllerModifyVolume`, VolumeAttributesClass) and sizes.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::ids::{shown, validate_dir_path, ClusterRef};

/// Folder holding `volumes/` and `snapshots/` when the StorageClass names none.
pub const DEFAULT_ROOT: &str = "/csi";
/// Largest quota the master accepts (1 EiB).
pub const MAX_CAPACITY: u64 = 1 << 60;
/// Longest trash time accepted (10 years).
const MAX_TRASH_SECS: u64 = 10 * 365 * 24 * 3600;
/// Parameter prefix reserved for the CO (`csi.storage.k8s.io/pvc/name`, ...).
const CO_PREFIX: &str = "csi.storage.k8s.io/";

/// What happens to a volume's files when the volume is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Files go to the Alces trash for the volume's trash time (an undo window:
    /// `alces trash restore`).
    Trash,
    /// Files are freed at once.
    Purge,
}

/// Parameters a volume keeps for its life (checked again on a repeated
/// `CreateVolume`) and those that may change later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeParams {
    /// Copies of each chunk (1-9); `None` keeps the filesystem's default.
    pub goal: Option<u32>,
    /// Trash time of the volume in seconds; `None` keeps the inherited one.
    pub trash_secs: Option<u64>,
    /// Trash or purge on delete.
    pub on_delete: OnDelete,
    /// Labels recorded on the volume (shown in its volume context).
    pub labels: BTreeMap<String, String>,
}

/// Parsed `CreateVolume` / `GetCapacity` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassParams {
    /// The cluster, when the StorageClass names one (else the driver's default).
    pub cluster: Option<ClusterRef>,
    /// Folder holding `volumes/` and `snapshots/`.
    pub root: String,
    /// What the volume keeps.
    pub volume: VolumeParams,
}

/// A parameter error: the message names the parameter and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

const CLASS_KEYS: &[&str] = &[
    "cluster",
    "master",
    "root",
    "goal",
    "trashTime",
    "onDelete",
    "labels",
];
const MUTABLE_KEYS: &[&str] = &["goal", "trashTime"];

/// Parses a goal, 1-9.
pub fn parse_goal(v: &str) -> Result<u32, ParamError> {
    match v.trim().parse::<u32>() {
        Ok(g) if (1..=9).contains(&g) => Ok(g),
        _ => Err(ParamError(format!(
            "goal {} is not a number of copies from 1 to 9",
            shown(v)
        ))),
    }
}

/// Parses a trash time: seconds (`3600`) or a duration (`90s`, `30m`, `24h`, `7d`).
pub fn parse_trash_time(v: &str) -> Result<u64, ParamError> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last() {
        Some((i, 's')) => (&v[..i], 1),
        Some((i, 'm')) => (&v[..i], 60),
        Some((i, 'h')) => (&v[..i], 3600),
        Some((i, 'd')) => (&v[..i], 86400),
        _ => (v, 1),
    };
    let secs = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|s| *s <= MAX_TRASH_SECS);
    secs.ok_or_else(|| {
        ParamError(format!(
            "trashTime {} is not a duration: use seconds or a number with s, m, h or d (at most 10 years), e.g. 24h; 0 disables the trash",
            shown(v)
        ))
    })
}

fn parse_labels(v: &str) -> Result<BTreeMap<String, String>, ParamError> {
    let mut out = BTreeMap::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, val) = pair.split_once('=').ok_or_else(|| {
            ParamError(format!(
                "labels entry {} is not key=value (labels: \"team=a,tier=gold\")",
                shown(pair)
            ))
        })?;
        let ok = |s: &str, max: usize| {
            s.len() <= max
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        };
        if k.is_empty() || !ok(k, 63) || !ok(val, 63) {
            return Err(ParamError(format!(
                "label {} is not allowed: keys and values are at most 63 letters, digits, '.', '_', '-' or '/'",
                shown(pair)
            )));
        }
        out.insert(k.to_string(), val.to_string());
    }
    if out.len() > 16 {
        return Err(ParamError("at most 16 labels are allowed".into()));
    }
    Ok(out)
}

fn unknown(key: &str, known: &[&str]) -> ParamError {
    ParamError(format!(
        "unknown parameter {}; this driver knows {}",
        shown(key),
        known.join(", ")
    ))
}

/// Parses StorageClass parameters (also merged with `mutable_parameters`).
pub fn parse_class(
    params: &HashMap<String, String>,
    mutable: &HashMap<String, String>,
) -> Result<ClassParams, ParamError> {
    let mut cluster = None;
    let mut root = DEFAULT_ROOT.to_string();
    let mut volume = VolumeParams {
        goal: None,
        trash_secs: None,
        on_delete: OnDelete::Trash,
        labels: BTreeMap::new(),
    };
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let v = &params[key];
        match key.as_str() {
            "cluster" | "master" => {
                if cluster.is_some() {
                    return Err(ParamError(
                        "give either the cluster parameter (AlcesCluster namespace/name) or master (host:port), not both".into(),
                    ));
                }
                let c = if key == "cluster" {
                    if !v.contains('/') {
                        return Err(ParamError(format!(
                            "cluster {} must be an AlcesCluster namespace/name",
                            shown(v)
                        )));
                    }
                    ClusterRef::parse(v)
                } else {
                    ClusterRef::master(v)
                };
                cluster = Some(c.map_err(|e| ParamError(format!("parameter {key}: {e}")))?);
            }
            "root" => {
                root = validate_dir_path("root", v).map_err(|e| ParamError(e.0))?;
            }
            "goal" => volume.goal = Some(parse_goal(v)?),
            "trashTime" => volume.trash_secs = Some(parse_trash_time(v)?),
            "onDelete" => {
                volume.on_delete = match v.as_str() {
                    "trash" => OnDelete::Trash,
                    "purge" => OnDelete::Purge,
                    _ => {
                        return Err(ParamError(format!(
                            "onDelete {} must be trash or purge",
                            shown(v)
                        )))
                    }
                }
            }
            "labels" => volume.labels = parse_labels(v)?,
            k if k.starts_with(CO_PREFIX) => {}
            k => return Err(unknown(k, CLASS_KEYS)),
        }
    }
    apply_mutable(&mut volume, mutable)?;
    Ok(ClassParams {
        cluster,
        root,
        volume,
    })
}

/// Applies mutable parameters (`goal`, `trashTime`) to `volume`.
pub fn apply_mutable(
    volume: &mut VolumeParams,
    mutable: &HashMap<String, String>,
) -> Result<(), ParamError> {
    for (k, v) in mutable {
        match k.as_str() {
            "goal" => volume.goal = Some(parse_goal(v)?),
            "trashTime" => volume.trash_secs = Some(parse_trash_time(v)?),
            k => {
                return Err(ParamError(format!(
                    "parameter {} cannot be changed after creation; mutable parameters are {}",
                    shown(k),
                    MUTABLE_KEYS.join(", ")
                )))
            }
        }
    }
    Ok(())
}

/// The capacity to give a volume for a CSI `CapacityRange`: the required bytes
/// exactly (a quota has byte granularity, nothing is rounded), or, when only a
/// limit is given, the smaller of the limit and `default`.
pub fn capacity(required: i64, limit: i64, default: u64) -> Result<u64, CapacityError> {
    if required < 0 || limit < 0 {
        return Err(CapacityError::Invalid(format!(
            "capacity_range has a negative size (required {required}, limit {limit})"
        )));
    }
    let (required, limit) = (required as u64, limit as u64);
    if limit != 0 && required > limit {
        return Err(CapacityError::Invalid(format!(
            "capacity_range asks for at least {required} bytes but at most {limit}"
        )));
    }
    let cap = if required > 0 {
        required
    } else if limit > 0 {
        limit.min(default)
    } else {
        default
    };
    if cap > MAX_CAPACITY {
        return Err(CapacityError::OutOfRange(format!(
            "{cap} bytes is more than the largest volume, {MAX_CAPACITY} bytes (1 EiB)"
        )));
    }
    Ok(cap)
}

/// Why a capacity range was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapacityError {
    /// Malformed (INVALID_ARGUMENT).
    Invalid(String),
    /// Past what can be given (OUT_OF_RANGE).
    OutOfRange(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn class_parameters() {
        let p = parse_class(
            &m(&[
                ("cluster", "ns/c"),
                ("root", "/k8s/"),
                ("goal", "3"),
                ("trashTime", "2h"),
                ("onDelete", "purge"),
                ("labels", "team=a, tier=gold"),
                ("csi.storage.k8s.io/pvc/name", "x"),
            ]),
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(p.root, "/k8s");
        assert_eq!(p.volume.goal, Some(3));
        assert_eq!(p.volume.trash_secs, Some(7200));
        assert_eq!(p.volume.on_delete, OnDelete::Purge);
        assert_eq!(p.volume.labels.len(), 2);
        assert_eq!(p.cluster.unwrap().master_address(), "c-master.ns.svc:9421");
        let d = parse_class(&HashMap::new(), &m(&[("goal", "2")])).unwrap();
        assert_eq!(d.root, DEFAULT_ROOT);
        assert_eq!(d.volume.goal, Some(2));
        assert_eq!(d.volume.on_delete, OnDelete::Trash);
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        for (k, v, want) in [
            ("goal", "0", "1 to 9"),
            ("goal", "ten", "1 to 9"),
            ("trashTime", "-1", "duration"),
            ("trashTime", "9999999999d", "duration"),
            ("onDelete", "keep", "trash or purge"),
            ("root", "../x", "absolute"),
            ("root", "/a/../b", "not allowed"),
            ("cluster", "nocolon", "namespace/name"),
            ("master", "host", "port"),
            ("labels", "novalue", "key=value"),
            ("gaol", "3", "unknown parameter"),
        ] {
            let e = parse_class(&m(&[(k, v)]), &HashMap::new()).unwrap_err();
            assert!(e.0.contains(want), "{k}={v}: {e}");
        }
        let e = parse_class(
            &m(&[("cluster", "a/b"), ("master", "h:1")]),
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(e.0.contains("not both"), "{e}");
        let e = parse_class(&HashMap::new(), &m(&[("root", "/x")])).unwrap_err();
        assert!(e.0.contains("cannot be changed"), "{e}");
    }

    #[test]
    fn capacities() {
        assert_eq!(capacity(0, 0, 100), Ok(100));
        assert_eq!(capacity(5, 0, 100), Ok(5));
        assert_eq!(capacity(0, 50, 100), Ok(50));
        assert_eq!(capacity(7, 7, 100), Ok(7));
        assert!(matches!(
            capacity(8, 7, 100),
            Err(CapacityError::Invalid(_))
        ));
        assert!(matches!(
            capacity(-1, 0, 100),
            Err(CapacityError::Invalid(_))
        ));
        assert!(matches!(
            capacity(i64::MAX, 0, 100),
            Err(CapacityError::OutOfRange(_))
        ));
    }
}
