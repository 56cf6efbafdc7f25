//! One inode: its attributes, its kind and what it holds (chunk list,
//! directory entries, symlink target, device number), kept small because the
//! master holds every inode in memory.

use std::collections::BTreeMap;

use alces_proto::pb::{self, FileType};

/// Extended attributes of one inode (boxed so inodes without any stay small).
pub type Xattrs = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// A name in a directory: up to 16 bytes are stored inline (most names), so an
/// entry needs no allocation of its own.
pub type Name = smallvec::SmallVec<[u8; 16]>;

/// The entries of a directory by name.
pub type Entries = BTreeMap<Name, u64>;

/// What an inode holds besides its attributes. Every variant is one pointer
/// wide, so the inode stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Regular file: chunk id per chunk index (0 = hole).
    File(thin_vec::ThinVec<u64>),
    /// Directory: entries by name.
    Dir(Box<Entries>),
    /// Symbolic link target.
    Symlink(thin_vec::ThinVec<u8>),
    /// Character or block device number.
    Device(u64),
    /// Fifo or socket.
    Special,
}

/// Kind of an inode: the wire [`FileType`] without its "unspecified" value, one
/// byte wide instead of four (an inode is 8 bytes smaller with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Regular file.
    Regular = FileType::Regular as u8,
    /// Directory.
    Directory = FileType::Directory as u8,
    /// Symbolic link.
    Symlink = FileType::Symlink as u8,
    /// Named pipe.
    Fifo = FileType::Fifo as u8,
    /// Unix socket.
    Socket = FileType::Socket as u8,
    /// Character device.
    CharDevice = FileType::CharDevice as u8,
    /// Block device.
    BlockDevice = FileType::BlockDevice as u8,
}

impl Kind {
    /// The kind of a wire file type number; None for "unspecified" and
    /// numbers no file type has.
    pub fn from_wire(k: i32) -> Option<Self> {
        Some(match FileType::try_from(k).ok()? {
            FileType::Unspecified => return None,
            FileType::Regular => Self::Regular,
            FileType::Directory => Self::Directory,
            FileType::Symlink => Self::Symlink,
            FileType::Fifo => Self::Fifo,
            FileType::Socket => Self::Socket,
            FileType::CharDevice => Self::CharDevice,
            FileType::BlockDevice => Self::BlockDevice,
        })
    }
}

impl From<Kind> for FileType {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Regular => Self::Regular,
            Kind::Directory => Self::Directory,
            Kind::Symlink => Self::Symlink,
            Kind::Fifo => Self::Fifo,
            Kind::Socket => Self::Socket,
            Kind::CharDevice => Self::CharDevice,
            Kind::BlockDevice => Self::BlockDevice,
        }
    }
}

impl PartialEq<FileType> for Kind {
    fn eq(&self, other: &FileType) -> bool {
        FileType::from(*self) == *other
    }
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Kind of the inode.
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u16,
    /// Copies per chunk (1-9).
    pub goal: u8,
    /// Hard link count (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes.
    pub size: u64,
    /// Access time, ns since the Unix epoch.
    pub atime: i64,
    /// Modification time.
    pub mtime: i64,
    /// Change time.
    pub ctime: i64,
    /// Directory holding the (latest) entry of this inode; the root is its own parent.
    pub parent: u64,
    /// Kind-specific contents.
    pub body: Body,
    /// Extended attributes, if any.
    pub xattrs: Option<Box<Xattrs>>,
}

impl Inode {
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    /// Directory entries, if a directory.
    pub fn entries(&self) -> Option<&Entries> {
        match &self.body {
            Body::Dir(e) => Some(e),
            _ => None,
        }
    }

    /// Chunk ids, if a regular file.
    pub fn chunks(&self) -> Option<&[u64]> {
        match &self.body {
            Body::File(c) => Some(c),
            _ => None,
        }
    }

    /// Device number for device nodes, else 0.
    pub fn rdev(&self) -> u64 {
        match self.body {
            Body::Device(d) => d,
            _ => 0,
        }
    }

    /// Wire attributes of this inode.
    pub fn attr(&self, ino: u64) -> pb::Attr {
        pb::Attr {
            inode: ino,
            kind: self.kind as i32,
            mode: u32::from(self.mode),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            atime_ns: self.atime,
            mtime_ns: self.mtime,
            ctime_ns: self.ctime,
            rdev: self.rdev(),
            goal: u32::from(self.goal),
            no_xattrs: self.xattrs.as_ref().is_none_or(|x| x.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire file type maps to a kind and back; "unspecified" and numbers
    /// no file type has are refused.
    #[test]
    fn kinds_round_trip_with_the_wire_file_types() {
        for k in 1..=7 {
            let kind = Kind::from_wire(k).unwrap_or_else(|| panic!("file type {k}"));
            assert_eq!(FileType::from(kind) as i32, k);
            assert_eq!(kind as i32, k, "same numbers as the wire enum");
            assert!(kind == FileType::try_from(k).unwrap());
        }
        for bad in [0, 8, -1, i32::MAX] {
            assert_eq!(Kind::from_wire(bad), None, "file type {bad}");
        }
        assert_eq!(std::mem::size_of::<Kind>(), 1);
    }

    #[test]
    fn inodes_stay_small() {
        // Memory per file is benchmarked: keep the fixed part of an inode compact.
        let size = std::mem::size_of::<Inode>();
        assert!(size <= 80, "Inode grew to {size} bytes");
        assert_eq!(
            std::mem::size_of::<Body>(),
            16,
            "every Body variant is one pointer"
        );
        assert_eq!(
            std::mem::size_of::<Option<Inode>>(),
            size,
            "an empty inode slot costs no more than an inode"
        );
    }
}
