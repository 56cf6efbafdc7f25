//! A directory listing captured at opendir: readdir offsets are indexes into it,
//! so a listing stays consistent while entries are added or removed.

use alces_proto::pb::{Attr, DirEntry, FileType};

/// One entry of a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapEntry {
    /// Inode of the entry (the master's numbering).
    pub inode: u64,
    /// Kind of the entry.
    pub kind: FileType,
    /// Entry name.
    pub name: Vec<u8>,
    /// Attributes when the listing had them.
    pub attr: Option<Attr>,
}

/// The entries of one directory, "." and ".." first.
#[derive(Clone, Debug, Default)]
pub struct DirSnapshot {
    entries: Vec<SnapEntry>,
}

impl DirSnapshot {
    /// Builds a snapshot of directory `inode` whose parent is `parent` from the
    /// entries the master listed.
    pub fn new(inode: u64, parent: u64, listed: Vec<DirEntry>) -> Self {
        let mut entries = Vec::with_capacity(listed.len() + 2);
        entries.push(SnapEntry {
            inode,
            kind: FileType::Directory,
            name: b".".to_vec(),
            attr: None,
        });
        entries.push(SnapEntry {
            inode: parent,
            kind: FileType::Directory,
            name: b"..".to_vec(),
            attr: None,
        });
        for e in listed {
            let kind = FileType::try_from(e.kind).unwrap_or(FileType::Regular);
            entries.push(SnapEntry {
                inode: e.inode,
                kind,
                name: e.name,
                attr: e.attr,
            });
        }
        Self { entries }
    }

    /// Number of entries including "." and "..".
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries from readdir offset `offset` on, each with the offset of the entry
    /// after it (what the kernel passes back to continue).
    pub fn entries_from(&self, offset: u64) -> impl Iterator<Item = (u64, &SnapEntry)> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        self.entries[start..]
            .iter()
            .enumerate()
            .map(move |(i, e)| ((start + i + 1) as u64, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, inode: u64) -> DirEntry {
        DirEntry {
            name: name.as_bytes().to_vec(),
            inode,
            kind: FileType::Regular as i32,
            attr: None,
            leased: false,
        }
    }

    #[test]
    fn offsets_resume() {
        let s = DirSnapshot::new(5, 1, vec![entry("a", 10), entry("b", 11), entry("c", 12)]);
        assert_eq!(s.len(), 5);
        let all: Vec<(u64, &[u8])> = s
            .entries_from(0)
            .map(|(o, e)| (o, e.name.as_slice()))
            .collect();
        assert_eq!(
            all,
            vec![(1, &b"."[..]), (2, b".."), (3, b"a"), (4, b"b"), (5, b"c")]
        );
        // Resuming at the offset given with "a" continues after "a".
        let rest: Vec<u64> = s.entries_from(3).map(|(_, e)| e.inode).collect();
        assert_eq!(rest, vec![11, 12]);
        assert_eq!(s.entries_from(5).count(), 0);
        assert_eq!(s.entries_from(u64::MAX).count(), 0);
        let dots: Vec<u64> = s.entries_from(0).take(2).map(|(_, e)| e.inode).collect();
        assert_eq!(dots, vec![5, 1]);
    }
}
