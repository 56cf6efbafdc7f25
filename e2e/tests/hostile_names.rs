//! Names and paths at and past the limits, and operations the kernel or the
//! filesystem must refuse with the right errno.

use std::fs;
use std::os::unix::fs::MetadataExt;

use alces_e2e::{cpath, errno, Cluster};

fn err_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("operation succeeded but must fail"),
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn hostile_names() {
    let c = Cluster::start_default();
    // A NUL byte cannot be passed through the C API at all.
    let e = fs::File::create(c.path("a\0b")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    // '/' in a name makes it a path.
    assert_eq!(err_of(fs::File::create(c.path("nodir/file"))), libc::ENOENT);
    fs::create_dir(c.path("dir")).unwrap();
    fs::write(c.path("dir/file"), b"x").unwrap();
    assert!(c.path("dir").join("file").is_file());

    // Name lengths.
    let n255 = "n".repeat(255);
    fs::write(c.path(&n255), b"255").expect("a 255-byte name must work");
    assert_eq!(fs::read(c.path(&n255)).unwrap(), b"255");
    assert!(fs::read_dir(&c.mnt)
        .unwrap()
        .any(|e| e.unwrap().file_name().len() == 255));
    let n256 = "n".repeat(256);
    assert_eq!(err_of(fs::write(c.path(&n256), b"x")), libc::ENAMETOOLONG);
    assert_eq!(err_of(fs::create_dir(c.path(&n256))), libc::ENAMETOOLONG);
    assert_eq!(
        err_of(fs::rename(c.path(&n255), c.path(&n256))),
        libc::ENAMETOOLONG
    );
    let n255u = "é".repeat(127) + "x"; // 255 bytes of UTF-8
    assert_eq!(n255u.len(), 255);
    fs::write(c.path(&n255u), b"u").unwrap();
    // Paths longer than PATH_MAX.
    let long_path = c.mnt.join(vec!["d"; 3000].join("/"));
    assert_eq!(err_of(fs::metadata(&long_path)), libc::ENAMETOOLONG);
    // Reserved names.
    assert_eq!(err_of(fs::create_dir(c.path("."))), libc::EEXIST);
    assert_eq!(err_of(fs::create_dir(c.path("dir/.."))), libc::EEXIST);

    // rmdir of a non-empty directory.
    assert_eq!(err_of(fs::remove_dir(c.path("dir"))), libc::ENOTEMPTY);
    assert!(c.path("dir/file").exists());
    // rmdir of a file, unlink of a directory.
    assert_eq!(err_of(fs::remove_dir(c.path("dir/file"))), libc::ENOTDIR);
    let e = err_of(fs::remove_file(c.path("dir")));
    assert!(
        e == libc::EISDIR || e == libc::EPERM,
        "unlink(dir) gave {e}"
    );
    // Rename a directory into its own subtree.
    fs::create_dir_all(c.path("p/q/r")).unwrap();
    assert_eq!(
        err_of(fs::rename(c.path("p"), c.path("p/q/r/p"))),
        libc::EINVAL
    );
    assert_eq!(err_of(fs::rename(c.path("p"), c.path("p/q"))), libc::EINVAL);
    assert!(c.path("p/q/r").is_dir());
    // Rename a directory over a non-empty one / a file over a directory.
    fs::create_dir(c.path("empty")).unwrap();
    let e = err_of(fs::rename(c.path("empty"), c.path("p")));
    assert!(
        e == libc::ENOTEMPTY || e == libc::EEXIST,
        "rename over a non-empty dir gave {e}"
    );
    assert_eq!(
        err_of(fs::rename(c.path("dir/file"), c.path("empty"))),
        libc::EISDIR
    );
    assert_eq!(
        err_of(fs::rename(c.path("empty"), c.path("dir/file"))),
        libc::ENOTDIR
    );
    // Hard link to a directory.
    assert_eq!(
        err_of(fs::hard_link(c.path("dir"), c.path("dirlink"))),
        libc::EPERM
    );
    // Creating over an existing name.
    assert_eq!(err_of(fs::create_dir(c.path("dir"))), libc::EEXIST);
    let f = cpath(&c.path("dir/file"));
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            f.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o644,
        )
    };
    assert_eq!((fd, errno()), (-1, libc::EEXIST));
    // ENOTDIR through a file in the middle of a path.
    assert_eq!(err_of(fs::metadata(c.path("dir/file/x"))), libc::ENOTDIR);

    // '..' stays within the tree: from deep inside, '..' walks back to the mount root.
    let root_ino = fs::metadata(&c.mnt).unwrap().ino();
    assert_eq!(
        fs::metadata(c.path("p/q/r/../../..")).unwrap().ino(),
        root_ino
    );
    assert_eq!(
        fs::metadata(c.path("p/q/../q/r/..")).unwrap().ino(),
        fs::metadata(c.path("p/q")).unwrap().ino()
    );
    // '..' at the mount root is the directory that holds the mount point.
    let parent = c.mnt.parent().unwrap();
    assert_eq!(
        fs::metadata(c.path("..")).unwrap().ino(),
        fs::metadata(parent).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(c.path("..")).unwrap().dev(),
        fs::metadata(parent).unwrap().dev()
    );
    // A symlink with '..' components cannot lead out of the filesystem root either.
    std::os::unix::fs::symlink("../../../../../../..", c.path("p/up")).unwrap();
    assert_eq!(
        fs::metadata(c.path("p/up")).unwrap().ino(),
        fs::metadata("/").unwrap().ino()
    );
    // Symlink targets too long.
    let e = err_of(std::os::unix::fs::symlink(
        "t".repeat(5000),
        c.path("toolong"),
    ));
    assert_eq!(e, libc::ENAMETOOLONG);
}
