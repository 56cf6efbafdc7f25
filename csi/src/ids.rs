//! Volume and snapshot ids, and the names they are made of.
//!
//! An id carries everything a later call needs, since `DeleteVolume` and
//! `DeleteSnapshot` receive nothing else: which Alces cluster, and the path of
//! the directory in its filesystem.
//!
//! ```text
//! a1#<cluster>#<path>
//! a1#alces-system/alces#/csi/volumes/pvc-5f0c...      (AlcesCluster namespace/name)
//! a1#10.0.0.7:9421#/csi/snapshots/snapshot-9e1d...     (master address)
//! ```
//!
//! `<path>` is `<root>/volumes/<name>` for a volume and `<root>/snapshots/<name>`
//! for a snapshot. Every part is checked strictly when parsed: the cluster is a
//! pair of DNS labels or a `host:port`, each path component is made of
//! `[A-Za-z0-9._-]`, begins with a letter or a digit (so never `.` or `..`),
//! and the whole id fits the CSI limit of 128 bytes. An id that fails any check
//! is refused before anything is looked up, so no id can name a directory
//! outside the volumes and snapshots folders.

use std::fmt;

/// Largest id, in bytes (the CSI specification's general string limit).
pub const MAX_ID_BYTES: usize = 128;
/// Largest volume or snapshot name, in bytes.
pub const MAX_NAME_BYTES: usize = 100;
/// Version tag every id starts with.
const ID_VERSION: &str = "a1";
/// Port of an AlcesCluster's master Service.
pub const MASTER_PORT: u16 = 9421;

/// Why a name, path or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, IdError> {
    Err(IdError(msg.into()))
}

/// Shows `s` safely in an error message: at most 64 characters, escaped.
pub fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// Checks a volume or snapshot name (the CO's `name`, also the directory name).
pub fn validate_name(what: &str, name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return err(format!("{what} is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return err(format!(
            "{what} {} is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            shown(name),
            name.len()
        ));
    }
    validate_component(what, name)
}

/// Checks one path component: `[A-Za-z0-9._-]`, beginning with a letter or digit.
fn validate_component(what: &str, c: &str) -> Result<(), IdError> {
    let first_ok = c
        .chars()
        .next()
        .is_some_and(|ch| ch.is_ascii_alphanumeric());
    let all_ok = c
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if !first_ok || !all_ok {
        return err(format!(
            "{what} {} is not allowed: use letters, digits, '.', '_' and '-', beginning with a letter or a digit",
            shown(c)
        ));
    }
    Ok(())
}

/// Checks an absolute directory path of the filesystem (`/`, or `/a/b` with
/// every component as [`validate_component`] wants) and returns it normalised
/// (no trailing `/`).
pub fn validate_dir_path(what: &str, path: &str) -> Result<String, IdError> {
    if !path.starts_with('/') {
        return err(format!(
            "{what} {} must be an absolute path such as /csi",
            shown(path)
        ));
    }
    if path.len() > MAX_ID_BYTES {
        return err(format!(
            "{what} {} is {} bytes long; at most {MAX_ID_BYTES} are allowed",
            shown(path),
            path.len()
        ));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    for c in trimmed[1..].split('/') {
        if c.is_empty() {
            return err(format!("{what} {} has an empty component", shown(path)));
        }
        validate_component(&format!("a component of {what}"), c)?;
    }
    Ok(trimmed.to_string())
}

/// Which Alces cluster a volume lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterRef {
    /// An `AlcesCluster` resource: its master is `<name>-master.<namespace>.svc:9421`.
    Named {
        /// Namespace of the resource.
        namespace: String,
        /// Name of the resource.
        name: String,
    },
    /// A master address, `host:port`.
    Master(String),
}

/// Checks that `s` is a DNS label (a Kubernetes namespace or object name part).
pub fn validate_dns_label(what: &str, s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        err(format!(
            "{what} {} is not a valid Kubernetes name (lower-case letters, digits and '-', at most 63)",
            shown(s)
        ))
    }
}

impl ClusterRef {
    /// Parses `namespace/name` (an AlcesCluster) or `host:port` (a master).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Some((ns, name)) = s.split_once('/') {
            validate_dns_label("the AlcesCluster namespace", ns)?;
            validate_dns_label("the AlcesCluster name", name)?;
            return Ok(Self::Named {
                namespace: ns.into(),
                name: name.into(),
            });
        }
        Self::master(s)
    }

    /// A master address, checked.
    pub fn master(addr: &str) -> Result<Self, IdError> {
        let ok_chars = addr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !ok_chars {
            return err(format!(
                "master address {} may only hold letters, digits, '.', '-', ':', '[' and ']'",
                shown(addr)
            ));
        }
        alces_proto::net::validate_addr(addr).map_err(IdError)?;
        Ok(Self::Master(addr.into()))
    }

    /// The master's `host:port`.
    pub fn master_address(&self) -> String {
        match self {
            Self::Named { namespace, name } => {
                format!("{name}-master.{namespace}.svc:{MASTER_PORT}")
            }
            Self::Master(a) => a.clone(),
        }
    }
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::Master(a) => f.write_str(a),
        }
    }
}

/// Whether an id names a volume or a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A volume: `<root>/volumes/<name>`.
    Volume,
    /// A snapshot: `<root>/snapshots/<name>`.
    Snapshot,
}

impl Kind {
    /// The folder under the root holding entries of this kind.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Volume => "volumes",
            Self::Snapshot => "snapshots",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Snapshot => "snapshot",
        }
    }
}

/// A volume or snapshot: its cluster, root folder and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryId {
    /// Volume or snapshot.
    pub kind: Kind,
    /// The cluster.
    pub cluster: ClusterRef,
    /// The folder holding `volumes/` and `snapshots/` (normalised, `/` or `/a/b`).
    pub root: String,
    /// The directory name.
    pub name: String,
}

/// A volume id.
pub type VolumeId = EntryId;
/// A snapshot id.
pub type SnapshotId = EntryId;

impl EntryId {
    /// Builds an id from checked parts; fails when it would exceed 128 bytes.
    pub fn new(kind: Kind, cluster: ClusterRef, root: &str, name: &str) -> Result<Self, IdError> {
        let root = validate_dir_path("root", root)?;
        validate_name(&format!("{} name", kind.noun()), name)?;
        let id = Self {
            kind,
            cluster,
            root,
            name: name.into(),
        };
        let len = id.to_string().len();
        if len > MAX_ID_BYTES {
            return err(format!(
                "the {} id would be {len} bytes ({}), over the CSI limit of {MAX_ID_BYTES}; use a shorter cluster reference, root or name",
                kind.noun(),
                shown(&id.to_string())
            ));
        }
        Ok(id)
    }

    /// Parses an id of `kind`, refusing anything malformed.
    pub fn parse(kind: Kind, s: &str) -> Result<Self, IdError> {
        let noun = kind.noun();
        if s.is_empty() {
            return err(format!("the {noun} id is empty"));
        }
        if s.len() > MAX_ID_BYTES {
            return err(format!(
                "the {noun} id is {} bytes long; Alces ids are at most {MAX_ID_BYTES}",
                s.len()
            ));
        }
        let mut parts = s.split('#');
        let (Some(version), Some(cluster), Some(path), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return err(format!(
                "{} is not an Alces {noun} id (expected {ID_VERSION}#<cluster>#<path>)",
                shown(s)
            ));
        };
        if version != ID_VERSION {
            return err(format!(
                "{} is not an Alces {noun} id: it should begin with '{ID_VERSION}#'",
                shown(s)
            ));
        }
        let cluster = ClusterRef::parse(cluster)?;
        let path = validate_dir_path(&format!("the path of {noun} id"), path)?;
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", ""));
        let (root, folder) = parent.rsplit_once('/').unwrap_or(("", ""));
        if folder != kind.folder() || name.is_empty() {
            return err(format!(
                "{} is not an Alces {noun} id: its path must end in /{}/<name>",
                shown(s),
                kind.folder()
            ));
        }
        let root = if root.is_empty() { "/" } else { root };
        Self::new(kind, cluster, root, name)
    }

    /// The absolute path of the directory in the filesystem.
    pub fn path(&self) -> String {
        format!("{}/{}", self.folder_path(), self.name)
    }

    /// The folder holding this entry (`<root>/volumes` or `<root>/snapshots`).
    pub fn folder_path(&self) -> String {
        folder_path(&self.root, self.kind)
    }

    /// Where the entry is built before it is renamed into place.
    pub fn staging_name(&self) -> String {
        format!("{CREATING_PREFIX}{}", self.name)
    }
}

/// Prefix of the temporary name an entry is built under.
pub const CREATING_PREFIX: &str = ".creating-";

/// `<root>/volumes` or `<root>/snapshots`.
pub fn folder_path(root: &str, kind: Kind) -> String {
    if root == "/" {
        format!("/{}", kind.folder())
    } else {
        format!("{root}/{}", kind.folder())
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ID_VERSION}#{}#{}", self.cluster, self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> ClusterRef {
        ClusterRef::parse("alces-system/alces").unwrap()
    }

    #[test]
    fn round_trip() {
        let id = EntryId::new(
            Kind::Volume,
            named(),
            "/csi",
            "pvc-0a1b2c3d-1111-2222-3333-444455556666",
        )
        .unwrap();
        let s = id.to_string();
        assert_eq!(
            s,
            "a1#alces-system/alces#/csi/volumes/pvc-0a1b2c3d-1111-2222-3333-444455556666"
        );
        assert_eq!(EntryId::parse(Kind::Volume, &s).unwrap(), id);
        assert_eq!(
            id.cluster.master_address(),
            "alces-master.alces-system.svc:9421"
        );
        let m = EntryId::new(
            Kind::Snapshot,
            ClusterRef::parse("[::1]:9421").unwrap(),
            "/",
            "s1",
        )
        .unwrap();
        assert_eq!(m.to_string(), "a1#[::1]:9421#/snapshots/s1");
        assert_eq!(EntryId::parse(Kind::Snapshot, &m.to_string()).unwrap(), m);
        assert_eq!(m.path(), "/snapshots/s1");
    }

    #[test]
    fn kinds_are_not_interchangeable() {
        let s = "a1#127.0.0.1:9421#/csi/volumes/v";
        assert!(EntryId::parse(Kind::Volume, s).is_ok());
        assert!(EntryId::parse(Kind::Snapshot, s).is_err());
    }

    #[test]
    fn hostile_ids_are_refused() {
        let long = "a".repeat(1024);
        for bad in [
            "",
            "a1",
            "a1##",
            "a2#127.0.0.1:9421#/csi/volumes/v",
            "a1#127.0.0.1:9421#/csi/volumes/..",
            "a1#127.0.0.1:9421#/csi/volumes/.",
            "a1#127.0.0.1:9421#/csi/../volumes/v",
            "a1#127.0.0.1:9421#/csi/volumes/v/..",
            "a1#127.0.0.1:9421#/csi/volumes/a/b",
            "a1#127.0.0.1:9421#/csi//volumes/v",
            "a1#127.0.0.1:9421#csi/volumes/v",
            "a1#127.0.0.1:9421#/csi/volumes/v\0x",
            "a1#127.0.0.1:9421#/csi/volumes/vé",
            "a1#127.0.0.1:9421#/csi/volumes/.hidden",
            "a1#127.0.0.1:9421#/csi/volumes/v#x",
            "a1#127.0.0.1#/csi/volumes/v",
            "a1#host/with/slash#/csi/volumes/v",
            "a1#Upper/case#/csi/volumes/v",
            "a1#a b:1#/csi/volumes/v",
            "a1#127.0.0.1:9421#/csi/volumes/",
            "a1#127.0.0.1:9421#/volumes",
        ] {
            assert!(
                EntryId::parse(Kind::Volume, bad).is_err(),
                "{bad:?} was accepted"
            );
        }
        let e = EntryId::parse(
            Kind::Volume,
            &format!("a1#127.0.0.1:9421#/csi/volumes/{long}"),
        )
        .unwrap_err();
        assert!(e.0.contains("128"), "{e}");
    }

    #[test]
    fn names() {
        assert!(validate_name("name", "pvc-1").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\0b",
            "ünï",
            "-x",
            ".x",
            &"x".repeat(101),
        ] {
            assert!(validate_name("name", bad).is_err(), "{bad:?}");
        }
        assert_eq!(validate_dir_path("root", "/csi/").unwrap(), "/csi");
        assert_eq!(validate_dir_path("root", "/").unwrap(), "/");
        assert!(validate_dir_path("root", "/a/../b").is_err());
        assert!(validate_dir_path("root", "a").is_err());
    }

    #[test]
    fn too_long_ids_are_refused_at_creation() {
        let e = EntryId::new(
            Kind::Volume,
            named(),
            &format!("/{}", "r".repeat(60)),
            &"n".repeat(60),
        )
        .unwrap_err();
        assert!(e.0.contains("over the CSI limit"), "{e}");
    }
}
