//! POSIX basics through a real FUSE mount: data, renames, links, special files,
//! attributes, xattrs, truncation, sparse files, big directories and statfs.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use alces_e2e::{cpath, errno, pattern, Cluster};

fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: valid C strings, AT_FDCWD.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn data_and_append(c: &Cluster) {
    let p = c.path("data.bin");
    let d = pattern(1, 3 * 1024 * 1024 + 12345);
    fs::write(&p, &d).expect("write 3 MiB");
    assert_eq!(
        fs::read(&p).expect("read back"),
        d,
        "read differs from what was written"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), d.len() as u64);
    let extra = pattern(2, 70_000);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(&extra).unwrap();
    drop(f);
    let mut want = d.clone();
    want.extend_from_slice(&extra);
    assert_eq!(fs::read(&p).unwrap(), want, "append");
    // Overwrite in the middle, across a chunk boundary.
    let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(1024 * 1024 - 100)).unwrap();
    f.write_all(&[0xAB; 300]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    want[1024 * 1024 - 100..1024 * 1024 + 200].fill(0xAB);
    assert_eq!(
        fs::read(&p).unwrap(),
        want,
        "overwrite across a chunk boundary"
    );
    // Positional read at an offset.
    let mut f = fs::File::open(&p).unwrap();
    f.seek(SeekFrom::Start(2 * 1024 * 1024 + 7)).unwrap();
    let mut buf = vec![0u8; 5000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &want[2 * 1024 * 1024 + 7..2 * 1024 * 1024 + 5007]);
    // An unlinked file stays readable through an open descriptor.
    let q = c.path("unlinked");
    fs::write(&q, b"still here").unwrap();
    let mut f = fs::File::open(&q).unwrap();
    fs::remove_file(&q).unwrap();
    assert!(!q.exists());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
}

fn renames(c: &Cluster) {
    let a = c.path("ra");
    let b = c.path("rb");
    fs::write(&a, b"A").unwrap();
    fs::rename(&a, &b).unwrap();
    assert!(!a.exists());
    assert_eq!(fs::read(&b).unwrap(), b"A");
    // Overwrite an existing target.
    fs::write(&a, b"A2").unwrap();
    let ino_a = fs::metadata(&a).unwrap().ino();
    fs::rename(&a, &b).unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"A2");
    assert_eq!(fs::metadata(&b).unwrap().ino(), ino_a);
    // RENAME_NOREPLACE.
    fs::write(&a, b"N").unwrap();
    assert_eq!(renameat2(&a, &b, libc::RENAME_NOREPLACE), Err(libc::EEXIST));
    assert_eq!(
        fs::read(&b).unwrap(),
        b"A2",
        "NOREPLACE must not touch the target"
    );
    let c2 = c.path("rc");
    renameat2(&a, &c2, libc::RENAME_NOREPLACE).expect("NOREPLACE to a free name");
    assert_eq!(fs::read(&c2).unwrap(), b"N");
    // RENAME_EXCHANGE, also between a file and a directory.
    renameat2(&b, &c2, libc::RENAME_EXCHANGE).expect("EXCHANGE");
    assert_eq!(fs::read(&b).unwrap(), b"N");
    assert_eq!(fs::read(&c2).unwrap(), b"A2");
    let d = c.path("rdir");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("inside"), b"x").unwrap();
    renameat2(&b, &d, libc::RENAME_EXCHANGE).expect("EXCHANGE file<->dir");
    assert!(b.join("inside").exists());
    assert_eq!(fs::read(&d).unwrap(), b"N");
    assert_eq!(
        renameat2(&c.path("nope"), &d, libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
    // Directory rename to another parent.
    fs::create_dir(c.path("rparent")).unwrap();
    fs::rename(&b, c.path("rparent/moved")).unwrap();
    assert_eq!(fs::read(c.path("rparent/moved/inside")).unwrap(), b"x");
}

fn links(c: &Cluster) {
    let f = c.path("lf");
    fs::write(&f, b"hello").unwrap();
    let h = c.path("lh");
    fs::hard_link(&f, &h).unwrap();
    let (m1, m2) = (fs::metadata(&f).unwrap(), fs::metadata(&h).unwrap());
    assert_eq!(m1.ino(), m2.ino());
    assert_eq!(m1.nlink(), 2);
    fs::OpenOptions::new()
        .append(true)
        .open(&h)
        .unwrap()
        .write_all(b" world")
        .unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello world");
    fs::remove_file(&f).unwrap();
    assert_eq!(fs::metadata(&h).unwrap().nlink(), 1);
    assert_eq!(fs::read(&h).unwrap(), b"hello world");
    // Symlinks.
    let s = c.path("ls");
    std::os::unix::fs::symlink("lh", &s).unwrap();
    assert_eq!(fs::read_link(&s).unwrap(), Path::new("lh"));
    assert!(fs::symlink_metadata(&s).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(&s).unwrap(), b"hello world");
    let dangling = c.path("ldang");
    std::os::unix::fs::symlink("/nonexistent/target", &dangling).unwrap();
    assert_eq!(
        fs::read(&dangling).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    let long = "x/".repeat(2000);
    let sl = c.path("llong");
    std::os::unix::fs::symlink(&long, &sl).unwrap();
    assert_eq!(fs::read_link(&sl).unwrap(), Path::new(&long));
}

fn special_files(c: &Cluster) {
    let fifo = c.path("fifo");
    let cf = cpath(&fifo);
    // SAFETY: valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(cf.as_ptr(), 0o644) },
        0,
        "mkfifo: {}",
        errno()
    );
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let dev = c.path("null2");
    let cd = cpath(&dev);
    let rdev = libc::makedev(1, 3);
    // SAFETY: valid C string.
    assert_eq!(
        unsafe { libc::mknod(cd.as_ptr(), libc::S_IFCHR | 0o600, rdev) },
        0,
        "mknod: {}",
        errno()
    );
    let m = fs::metadata(&dev).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), rdev);
    let sock = c.path("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind unix socket");
    assert!(fs::metadata(&sock).unwrap().file_type().is_socket());
}

fn attributes(c: &Cluster) {
    let p = c.path("attrs");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4755);
    let cp = cpath(&p);
    // SAFETY: valid C string.
    assert_eq!(
        unsafe { libc::chown(cp.as_ptr(), 1234, 5678) },
        0,
        "chown: {}",
        errno()
    );
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_200_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    // SAFETY: valid C string and a two-element array.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), times.as_ptr(), 0) },
        0
    );
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_200_000_000, 987_654_321));
    // New files get the caller's ownership and the umask-ed mode.
    let q = c.path("modefile");
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&q)
        .unwrap();
    let m = fs::metadata(&q).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(m.uid(), 0);
}

fn xattrs(c: &Cluster) {
    let p = c.path("xattr");
    fs::write(&p, b"x").unwrap();
    let cp = cpath(&p);
    let name = c"user.alces.test";
    let val = b"some value \x00 with nul";
    // SAFETY: valid pointers and lengths.
    let r = unsafe {
        libc::setxattr(
            cp.as_ptr(),
            name.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", errno());
    let mut buf = [0u8; 256];
    // SAFETY: valid pointers and lengths.
    let n = unsafe {
        libc::getxattr(
            cp.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, val.len() as isize, "getxattr: {}", errno());
    assert_eq!(&buf[..val.len()], val);
    // XATTR_CREATE on an existing name fails.
    // SAFETY: as above.
    let r = unsafe {
        libc::setxattr(
            cp.as_ptr(),
            name.as_ptr(),
            val.as_ptr().cast(),
            1,
            libc::XATTR_CREATE,
        )
    };
    assert_eq!((r, errno()), (-1, libc::EEXIST));
    // SAFETY: as above.
    let n = unsafe { libc::listxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n > 0, "listxattr: {}", errno());
    let names: Vec<&[u8]> = buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    assert!(
        names.contains(&&b"user.alces.test"[..]),
        "listxattr lacks the name: {names:?}"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::removexattr(cp.as_ptr(), name.as_ptr()) }, 0);
    // SAFETY: as above.
    let n = unsafe {
        libc::getxattr(
            cp.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!((n, errno()), (-1, libc::ENODATA));
}

fn truncation_and_sparse(c: &Cluster) {
    let p = c.path("trunc");
    let d = pattern(3, 2 * 1024 * 1024 + 500);
    fs::write(&p, &d).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(1024 * 1024 + 77).unwrap();
    drop(f);
    assert_eq!(
        fs::read(&p).unwrap(),
        &d[..1024 * 1024 + 77],
        "shrink mid-chunk"
    );
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(3 * 1024 * 1024).unwrap();
    drop(f);
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 3 * 1024 * 1024);
    assert_eq!(&got[..1024 * 1024 + 77], &d[..1024 * 1024 + 77]);
    assert!(
        got[1024 * 1024 + 77..].iter().all(|b| *b == 0),
        "extension must read as zeros"
    );
    // Shrink to zero then grow: old bytes must not come back.
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(0).unwrap();
    f.set_len(100_000).unwrap();
    drop(f);
    assert!(
        fs::read(&p).unwrap().iter().all(|b| *b == 0),
        "old data reappeared after truncate"
    );
    // Sparse file with a hole of several chunks.
    let s = c.path("sparse");
    let mut f = fs::File::create(&s).unwrap();
    f.seek(SeekFrom::Start(5 * 1024 * 1024 + 3)).unwrap();
    f.write_all(b"end").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let got = fs::read(&s).unwrap();
    assert_eq!(got.len(), 5 * 1024 * 1024 + 6);
    assert!(got[..5 * 1024 * 1024 + 3].iter().all(|b| *b == 0));
    assert_eq!(&got[5 * 1024 * 1024 + 3..], b"end");
}

/// Extending a file with a write past EOF after part of it was read: the gap
/// between the old end and the new data reads as zeros, in full (found by fsx).
fn extend_after_read(c: &Cluster) {
    use std::os::unix::fs::FileExt;
    let p = c.path("extend-after-read");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(0x2e42d).unwrap();
    let mut buf = vec![0u8; 0x23c0d];
    f.read_exact_at(&mut buf, 0x3bb6).unwrap();
    let data = pattern(5, 0x3cc95);
    f.write_all_at(&data, 0x1a5bea).unwrap();
    let mut buf = vec![0xEEu8; 0x1e0b5];
    let n = f.read_at(&mut buf, 0x21716).unwrap();
    assert_eq!(
        n,
        buf.len(),
        "short read inside the file after an extending write"
    );
    assert!(
        buf.iter().all(|b| *b == 0),
        "the gap after an extending write is not zeros"
    );
    let mut tail = vec![0u8; data.len()];
    f.read_exact_at(&mut tail, 0x1a5bea).unwrap();
    assert!(tail == data);
}

fn big_directory(c: &Cluster) {
    let d = c.path("big");
    fs::create_dir(&d).unwrap();
    for i in 0..2000 {
        fs::File::create(d.join(format!("entry-{i:05}"))).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = (0..2000).map(|i| format!("entry-{i:05}")).collect();
    assert_eq!(
        names.len(),
        2000,
        "readdir returned {} entries",
        names.len()
    );
    assert_eq!(names, want);
    // Removing while listing from the start again.
    for i in (0..2000).step_by(2) {
        fs::remove_file(d.join(format!("entry-{i:05}"))).unwrap();
    }
    assert_eq!(fs::read_dir(&d).unwrap().count(), 1000);
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    fs::create_dir(d.join("sub")).unwrap();
    assert_eq!(
        fs::metadata(&d).unwrap().nlink(),
        3,
        "a subdirectory adds a link to its parent"
    );
}

fn statfs(c: &Cluster) {
    let cp = cpath(&c.mnt);
    // SAFETY: zeroed statvfs is valid; valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::statvfs(cp.as_ptr(), &mut st) },
        0,
        "statvfs: {}",
        errno()
    );
    assert!(
        st.f_bsize > 0 && st.f_blocks > 0,
        "statvfs reports no space: {} x {}",
        st.f_bsize,
        st.f_blocks
    );
    assert!(st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_blocks);
    assert!(st.f_namemax >= 255 || st.f_namemax == 0);
}

#[test]
fn posix_basics() {
    let c = Cluster::start_default();
    data_and_append(&c);
    renames(&c);
    links(&c);
    special_files(&c);
    attributes(&c);
    xattrs(&c);
    truncation_and_sparse(&c);
    big_directory(&c);
    statfs(&c);
    // Directories.
    let d = c.path("d1/d2/d3");
    fs::create_dir_all(&d).unwrap();
    assert!(fs::metadata(&d).unwrap().is_dir());
    fs::remove_dir(&d).unwrap();
    assert!(!d.exists());
    extend_after_read(&c);
}
