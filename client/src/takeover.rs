//! Serving a FUSE connection this process did not mount, and continuing one
//! whose daemon died (a *takeover*).
//!
//! A FUSE connection lives as long as some process holds its `/dev/fuse`
//! file; when its daemon dies, requests wait in the kernel. A new daemon given
//! that descriptor continues the connection:
//!
//! - fuser only serves an existing descriptor through `Session::from_fd`,
//!   which waits for the FUSE INIT the kernel sends once per connection. The
//!   new daemon hands it one end of a `SOCK_SEQPACKET` socketpair holding a
//!   synthetic INIT built from the parameters the first daemon recorded
//!   ([`init_channel`]); the reply goes into the pair. Then the real
//!   descriptor is `dup3`ed over the pair's descriptor number
//!   ([`install_fuse_fd`]) before the session runs.
//! - [`notify_resend`] (`FUSE_NOTIFY_RESEND`, Linux >= 6.9) has the kernel
//!   queue again every request the dead daemon had read but not answered,
//!   with bit 63 of the request id set ([`RESENT`]).
//! - The *state file* (`--state-fd`: a memfd, or any regular file, held by
//!   whoever holds the FUSE descriptor) holds the [`SessionRecord`] in its first
//!   [`STATE_BYTES`] and the write journal ([`crate::journal`]) after it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

/// Bit 63 of a request id: the kernel resent this request after a
/// `FUSE_NOTIFY_RESEND` (a daemon read it before and did not answer).
pub const RESENT: u64 = 1 << 63;
/// Bytes at the start of the state file before the journal: the session
/// record, then the keeper's note.
pub const STATE_BYTES: u64 = 4096;
/// Bytes of the session record (written by the daemon).
pub const RECORD_BYTES: u64 = 2048;
/// Where the keeper's note begins: `STATE_BYTES - KEEPER_NOTE` bytes that the
/// process keeping the connection writes and the daemon never touches (what a
/// later keeper needs to start a daemon, held in memory only).
pub const KEEPER_NOTE: u64 = RECORD_BYTES;
/// The first line of a session record (its format version).
const STATE_MAGIC: &str = "alces-mount-state 1";
/// `FUSE_NOTIFY_RESEND`, the notification code (Linux >= 6.9).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// `FUSE_INIT` opcode.
const FUSE_INIT: u32 = 26;
/// `FUSE_INIT_EXT`: `flags2` carries the upper 32 capability bits.
const FUSE_INIT_EXT: u32 = 1 << 30;
/// Character device numbers of `/dev/fuse`.
const FUSE_MAJOR: u32 = 10;
const FUSE_MINOR: u32 = 229;

/// What the kernel offered in its FUSE INIT, as the first daemon saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInit {
    /// ABI major version.
    pub major: u32,
    /// ABI minor version.
    pub minor: u32,
    /// Largest readahead the kernel offered.
    pub max_readahead: u32,
    /// Capability bits the kernel offered (all 64).
    pub flags: u64,
}

/// What a daemon records about the connection it serves, for the daemon that
/// takes it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The kernel's INIT.
    pub init: KernelInit,
    /// Handle generation of the daemon that wrote the record: file handles
    /// carry it, so a new daemon (generation + 1) never reuses one.
    pub generation: u64,
    /// Pid of that daemon.
    pub pid: u32,
    /// That daemon's session with the master, which the next daemon
    /// continues (its open files, locks and reply cache stay).
    pub master_session: u64,
    /// The session's secret, which the master asks of whoever resumes it
    /// (empty in a record of a daemon before 0.2: the next daemon then
    /// closes that session and registers its own).
    pub master_secret: Vec<u8>,
    /// Version of `alces-mount` that wrote it.
    pub version: String,
}

impl SessionRecord {
    /// The text form (at most [`RECORD_BYTES`]).
    pub fn encode(&self) -> String {
        let i = &self.init;
        format!(
            "{STATE_MAGIC}\nabi {}.{}\nmax_readahead {}\nflags {:#x}\ngeneration {}\npid {}\nmaster_session {}\nmaster_secret {}\nversion {}\n",
            i.major, i.minor, i.max_readahead, i.flags, self.generation, self.pid, self.master_session, hex(&self.master_secret), self.version
        )
    }

    /// Parses [`Self::encode`]'s text; `Ok(None)` for an empty state.
    pub fn decode(text: &[u8]) -> Result<Option<Self>, String> {
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let text = std::str::from_utf8(&text[..end])
            .map_err(|_| "the state holds no session record (not text)".to_string())?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let mut lines = text.lines();
        if lines.next() != Some(STATE_MAGIC) {
            return Err(format!(
                "the state does not begin with '{STATE_MAGIC}': not a session record of this alces-mount"
            ));
        }
        let mut abi = None;
        let (mut ra, mut flags, mut generation, mut pid, mut version) =
            (None, None, None, None, None);
        let mut master_session = None;
        let mut master_secret = Vec::new();
        for l in lines {
            let Some((k, v)) = l.split_once(' ') else {
                continue;
            };
            let bad = || format!("bad session record line {l:?}");
            match k {
                "abi" => {
                    let (a, b) = v.split_once('.').ok_or_else(bad)?;
                    abi = Some((
                        a.parse::<u32>().map_err(|_| bad())?,
                        b.parse::<u32>().map_err(|_| bad())?,
                    ));
                }
                "max_readahead" => ra = Some(v.parse::<u32>().map_err(|_| bad())?),
                "flags" => {
                    flags = Some(
                        u64::from_str_radix(v.trim_start_matches("0x"), 16).map_err(|_| bad())?,
                    )
                }
                "generation" => generation = Some(v.parse::<u64>().map_err(|_| bad())?),
                "pid" => pid = Some(v.parse::<u32>().map_err(|_| bad())?),
                "master_session" => master_session = Some(v.parse::<u64>().map_err(|_| bad())?),
                "master_secret" => master_secret = unhex(v).ok_or_else(bad)?,
                // Printable text, as `encode` writes it: a control character
                // (a stray '\r' before the end) would not survive a rewrite.
                "version" if v.chars().any(char::is_control) => return Err(bad()),
                "version" => version = Some(v.to_string()),
                _ => {}
            }
        }
        let missing = |f: &str| format!("the session record lacks '{f}'");
        let (major, minor) = abi.ok_or_else(|| missing("abi"))?;
        Ok(Some(Self {
            init: KernelInit {
                major,
                minor,
                max_readahead: ra.ok_or_else(|| missing("max_readahead"))?,
                flags: flags.ok_or_else(|| missing("flags"))?,
            },
            generation: generation.ok_or_else(|| missing("generation"))?,
            pid: pid.ok_or_else(|| missing("pid"))?,
            master_session: master_session.ok_or_else(|| missing("master_session"))?,
            master_secret,
            version: version.ok_or_else(|| missing("version"))?,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Takes ownership of descriptor `fd` given on the command line, checking that
/// it is open.
pub fn take_fd(what: &str, fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::other(format!("{what} {fd} is not a descriptor")));
    }
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::other(format!(
            "{what} {fd} is not an open descriptor of this process: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the descriptor is open and handed to this process to own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not inherited by anything this process starts.
    // SAFETY: plain fcntl on an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(owned)
}

/// Checks that `fd` is an open `/dev/fuse` descriptor (character device 10:229,
/// open for reading and writing).
pub fn check_fuse_device(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: zeroed stat is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let is_chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    let (maj, min) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    if !is_chr || maj != FUSE_MAJOR || min != FUSE_MINOR {
        return Err(io::Error::other(format!(
            "descriptor {} is not /dev/fuse ({}); pass the descriptor of /dev/fuse that was mounted with mount(2) fd=N",
            fd.as_raw_fd(),
            if is_chr {
                format!("character device {maj}:{min}")
            } else {
                "not a character device".to_string()
            }
        )));
    }
    // SAFETY: F_GETFL on an open descriptor.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl & libc::O_ACCMODE != libc::O_RDWR {
        return Err(io::Error::other(format!(
            "descriptor {} of /dev/fuse is not open for reading and writing",
            fd.as_raw_fd()
        )));
    }
    Ok(())
}

/// The state file of a connection: the session record, then the journal.
#[derive(Debug)]
pub struct StateFile {
    file: File,
}

impl StateFile {
    /// Wraps descriptor `fd` (a memfd or a regular file, read-write).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(
                "the state descriptor is not a regular file or memfd",
            ));
        }
        Ok(Self { file })
    }

    /// The file (the journal lives after [`STATE_BYTES`]).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The recorded session, if any.
    pub fn read_record(&self) -> io::Result<Option<SessionRecord>> {
        let mut buf = vec![0u8; RECORD_BYTES as usize];
        let mut got = 0;
        while got < buf.len() {
            let n = self.file.read_at(&mut buf[got..], got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        SessionRecord::decode(&buf[..got]).map_err(io::Error::other)
    }

    /// Replaces the recorded session.
    pub fn write_record(&self, r: &SessionRecord) -> io::Result<()> {
        let mut buf = r.encode().into_bytes();
        if buf.len() > RECORD_BYTES as usize {
            return Err(io::Error::other("session record too long"));
        }
        buf.resize(RECORD_BYTES as usize, 0);
        self.file.write_all_at(&buf, 0)
    }
}

/// The bytes of a FUSE INIT request as the kernel would send it.
pub fn synthetic_init(init: &KernelInit) -> Vec<u8> {
    let mut flags = init.flags as u32;
    let flags2 = (init.flags >> 32) as u32;
    if flags2 != 0 {
        flags |= FUSE_INIT_EXT;
    }
    let body: [u32; 16] = [
        init.major,
        init.minor,
        init.max_readahead,
        flags,
        flags2,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    let len = 40 + 64u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&FUSE_INIT.to_ne_bytes());
    b.extend_from_slice(&1u64.to_ne_bytes()); // unique
    b.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
    b.extend_from_slice(&[0u8; 12]); // uid, gid, pid
    b.extend_from_slice(&[0u8; 4]); // total_extlen, padding
    for v in body {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

/// A descriptor to hand to `Session::from_fd` in place of `/dev/fuse`: one end
/// of a `SOCK_SEQPACKET` pair whose first message is a synthetic INIT. The
/// second descriptor (the other end, receiving the reply) must stay open until
/// the session is built.
pub fn init_channel(init: &KernelInit) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a writable array of two ints.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two new descriptors owned from here on.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let msg = synthetic_init(init);
    // SAFETY: msg is a valid buffer; theirs is open.
    let n = unsafe { libc::write(theirs.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n != msg.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok((ours, theirs))
}

/// Makes descriptor number `onto` (the session's channel) refer to the FUSE
/// connection of `fuse` (`dup3`, atomically, close-on-exec).
pub fn install_fuse_fd(fuse: &OwnedFd, onto: RawFd) -> io::Result<()> {
    // SAFETY: both descriptors are open; dup3 replaces `onto` atomically.
    if unsafe { libc::dup3(fuse.as_raw_fd(), onto, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to queue again every request of the connection that a
/// daemon read and did not answer (`FUSE_NOTIFY_RESEND`, Linux >= 6.9).
pub fn notify_resend(fd: RawFd) -> io::Result<()> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&16u32.to_ne_bytes());
    b.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    b.extend_from_slice(&0u64.to_ne_bytes());
    // SAFETY: b is a valid buffer of 16 bytes; fd is the FUSE descriptor.
    let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
    if n != 16 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("FUSE_NOTIFY_RESEND refused ({e}); it needs Linux 6.9 or later"),
        ));
    }
    Ok(())
}

/// Whether a request id marks a request the kernel resent after a takeover.
pub fn is_resent(unique: u64) -> bool {
    unique & RESENT != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `mount_state` fuzz target (fuzz/seeds/mount_state/
    /// crash-version-with-cr): a version ending in '\r' was accepted, and
    /// the record written back from it read as another version.
    #[test]
    fn a_version_with_control_characters_is_refused() {
        let text = format!(
            "{STATE_MAGIC}\nabi 7.31\nmax_readahead 131072\nflags 0x3\ngeneration 3\npid 4242\nmaster_session 17\nversion 0.1.0\r"
        );
        let e = SessionRecord::decode(text.as_bytes()).unwrap_err();
        assert!(
            e.contains("bad session record line") && e.contains("version"),
            "{e}"
        );
        let tab = text.replace("0.1.0\r", "0.1\t0");
        assert!(SessionRecord::decode(tab.as_bytes()).is_err());
        let ok = text.replace("0.1.0\r", "0.1.0");
        let r = SessionRecord::decode(ok.as_bytes()).unwrap().unwrap();
        assert_eq!(SessionRecord::decode(r.encode().as_bytes()), Ok(Some(r)));
    }

    fn record() -> SessionRecord {
        SessionRecord {
            init: KernelInit {
                major: 7,
                minor: 45,
                max_readahead: 131072,
                flags: 0x0000_0003_73ff_fffb,
            },
            generation: 3,
            pid: 42,
            master_session: 0x1234_5678_9abc_def0,
            master_secret: (0u8..16).collect(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let r = record();
        assert_eq!(
            SessionRecord::decode(r.encode().as_bytes()),
            Ok(Some(r.clone()))
        );
        assert_eq!(SessionRecord::decode(&[0u8; 64]), Ok(None));
        assert_eq!(SessionRecord::decode(b""), Ok(None));
        let e = SessionRecord::decode(b"hello\n").unwrap_err();
        assert!(e.contains("not a session record"), "{e}");
        let e = SessionRecord::decode(format!("{STATE_MAGIC}\nabi 7.45\n").as_bytes()).unwrap_err();
        assert!(e.contains("lacks"), "{e}");
        // A record of an earlier daemon, without a secret, still reads.
        let old = r
            .encode()
            .replace("master_secret 000102030405060708090a0b0c0d0e0f\n", "");
        let d = SessionRecord::decode(old.as_bytes()).unwrap().unwrap();
        assert!(d.master_secret.is_empty());
        let bad = r.encode().replace("master_secret 00", "master_secret zz");
        let e = SessionRecord::decode(bad.as_bytes()).unwrap_err();
        assert!(e.contains("bad session record line"), "{e}");
    }

    #[test]
    fn synthetic_init_layout() {
        let b = synthetic_init(&record().init);
        assert_eq!(b.len(), 104);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 104);
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), FUSE_INIT);
        assert_eq!(u32::from_ne_bytes(b[40..44].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(b[44..48].try_into().unwrap()), 45);
        let flags = u32::from_ne_bytes(b[52..56].try_into().unwrap());
        assert_ne!(flags & FUSE_INIT_EXT, 0);
        assert_eq!(u32::from_ne_bytes(b[56..60].try_into().unwrap()), 3);
    }

    #[test]
    fn a_regular_file_is_not_a_fuse_device() {
        let f = tempfile::tempfile().unwrap();
        let e = check_fuse_device(&OwnedFd::from(f)).unwrap_err();
        assert!(e.to_string().contains("is not /dev/fuse"), "{e}");
        assert!(take_fd("--fuse-fd", 999).is_err());
        assert!(is_resent(RESENT | 5) && !is_resent(5));
    }
}
