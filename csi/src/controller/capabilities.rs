//! Which volume capabilities Alces volumes offer: mounted filesystems (never
//! block devices) in every access mode, since a volume is a directory that any
//! number of nodes may mount read-write.

use crate::pb;
use crate::pb::volume_capability::access_mode::Mode;
use crate::pb::volume_capability::AccessType;

/// Filesystem types a capability may ask for.
pub const FS_TYPES: &[&str] = &["", "alces", "fuse.alces"];
/// Mount flags honoured at publish (bind-mount flags).
pub const MOUNT_FLAGS: &[&str] = &["ro", "nosuid", "nodev", "noexec", "noatime"];

/// Checks one capability; the error says what is not supported.
pub fn check(c: &pb::VolumeCapability) -> Result<(), String> {
    match &c.access_type {
        None => return Err("a volume capability has no access type: ask for mount".into()),
        Some(AccessType::Block(_)) => {
            return Err(
                "block volumes are not supported: Alces volumes are filesystems (use volumeMode: Filesystem)"
                    .into(),
            )
        }
        Some(AccessType::Mount(m)) => {
            if !FS_TYPES.contains(&m.fs_type.as_str()) {
                return Err(format!(
                    "fs_type {:?} is not supported: Alces volumes are mounted as fuse.alces (leave fs_type empty)",
                    m.fs_type
                ));
            }
            for f in &m.mount_flags {
                if !MOUNT_FLAGS.contains(&f.as_str()) {
                    return Err(format!(
                        "mount flag {f:?} is not supported; supported flags: {}",
                        MOUNT_FLAGS.join(", ")
                    ));
                }
            }
            if !m.volume_mount_group.is_empty() && m.volume_mount_group.parse::<u32>().is_err() {
                return Err(format!(
                    "volume_mount_group {:?} is not a numeric group id",
                    m.volume_mount_group
                ));
            }
        }
    }
    let mode = c
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    if mode == Mode::Unknown {
        return Err("a volume capability has no (or an unknown) access mode".into());
    }
    Ok(())
}

/// Checks a non-empty list of capabilities.
pub fn check_all(caps: &[pb::VolumeCapability]) -> Result<(), String> {
    if caps.is_empty() {
        return Err("volume_capabilities is required".into());
    }
    caps.iter().try_for_each(check)
}

/// True when the capability only reads.
pub fn read_only(c: &pb::VolumeCapability) -> bool {
    matches!(
        c.access_mode
            .as_ref()
            .and_then(|m| Mode::try_from(m.mode).ok()),
        Some(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(t: AccessType, mode: Mode) -> pb::VolumeCapability {
        pb::VolumeCapability {
            access_type: Some(t),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn mount(fs: &str, flags: &[&str]) -> AccessType {
        AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            mount_flags: flags.iter().map(|s| s.to_string()).collect(),
            volume_mount_group: String::new(),
        })
    }

    #[test]
    fn capabilities() {
        assert!(check(&cap(mount("", &[]), Mode::MultiNodeMultiWriter)).is_ok());
        assert!(check(&cap(
            mount("fuse.alces", &["ro"]),
            Mode::SingleNodeSingleWriter
        ))
        .is_ok());
        assert!(check(&cap(mount("ext4", &[]), Mode::SingleNodeWriter))
            .unwrap_err()
            .contains("ext4"));
        assert!(check(&cap(mount("", &["sync"]), Mode::SingleNodeWriter)).is_err());
        assert!(check(&cap(
            AccessType::Block(BlockVolume {}),
            Mode::SingleNodeWriter
        ))
        .unwrap_err()
        .contains("block"));
        assert!(check(&cap(mount("", &[]), Mode::Unknown)).is_err());
        assert!(check_all(&[]).is_err());
        assert!(read_only(&cap(mount("", &[]), Mode::MultiNodeReaderOnly)));
        assert!(!read_only(&cap(mount("", &[]), Mode::MultiNodeMultiWriter)));
    }
}
