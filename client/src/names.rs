//! Validation of entry names and symlink targets, done before contacting the master.

use crate::error::{Error, Result};

/// Longest entry name in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target in bytes.
pub const MAX_SYMLINK_LEN: usize = 4095;

/// Checks an entry name: 1..=255 bytes, no '/', no NUL, not "." or "..".
///
/// Returns `EINVAL` for a malformed name and `ENAMETOOLONG` for one over 255 bytes.
pub fn validate_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(libc::EINVAL, "an entry name cannot be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::new(
            libc::ENAMETOOLONG,
            format!(
                "entry name is {} bytes long; at most {MAX_NAME_LEN} are allowed",
                name.len()
            ),
        ));
    }
    if name == b"." || name == b".." {
        return Err(Error::new(
            libc::EINVAL,
            "'.' and '..' cannot be used as entry names",
        ));
    }
    if name.contains(&b'/') {
        return Err(Error::new(libc::EINVAL, "an entry name cannot contain '/'"));
    }
    if name.contains(&0) {
        return Err(Error::new(
            libc::EINVAL,
            "an entry name cannot contain a NUL byte",
        ));
    }
    Ok(())
}

/// Checks a symlink target: 1..=4095 bytes without NUL.
pub fn validate_symlink_target(target: &[u8]) -> Result<()> {
    if target.is_empty() {
        return Err(Error::new(libc::ENOENT, "a symlink target cannot be empty"));
    }
    if target.len() > MAX_SYMLINK_LEN {
        return Err(Error::new(
            libc::ENAMETOOLONG,
            format!(
                "symlink target is {} bytes long; at most {MAX_SYMLINK_LEN} are allowed",
                target.len()
            ),
        ));
    }
    if target.contains(&0) {
        return Err(Error::new(
            libc::EINVAL,
            "a symlink target cannot contain a NUL byte",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name(b"a").is_ok());
        assert!(validate_name(&[b'x'; 255]).is_ok());
        assert_eq!(
            validate_name(&[b'x'; 256]).unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(
                validate_name(bad).unwrap_err().errno(),
                libc::EINVAL,
                "{bad:?}"
            );
        }
        assert!(validate_name(b"...").is_ok());
    }

    #[test]
    fn symlink_targets() {
        assert!(validate_symlink_target(b"../x/y").is_ok());
        assert_eq!(
            validate_symlink_target(&[b'a'; 4096]).unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
        assert!(validate_symlink_target(&[b'a'; 4095]).is_ok());
        assert!(validate_symlink_target(b"a\0").is_err());
    }
}
