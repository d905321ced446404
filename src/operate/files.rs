//! Files the agent creates (the checkpoint and its temporary file, the dead-letter file): mode
//! 0600 whatever the umask, never opened through a symbolic link, temporary files created
//! exclusively.
//!
//! The agent often runs as root on a node, writing into directories others may control (a
//! hostPath, a checkout): a symlink planted at a name the agent writes must not redirect the
//! write to another file, and what it writes (the audit log's actors, the checkpoint) is for
//! its owner only. std has no `O_NOFOLLOW`, so its value comes from the kernel's headers per
//! architecture (`asm-generic/fcntl.h` and `asm/fcntl.h`); `O_EXCL` is std's `create_new`.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the agent creates.
pub const PRIVATE_MODE: u32 = 0o600;

/// `O_NOFOLLOW`: 0o400000 in asm-generic (x86, x86_64, riscv, loongarch, s390x, mips, sparc);
/// 0o100000 on arm, aarch64 and powerpc.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "powerpc",
        target_arch = "powerpc64"
    )
))]
pub const O_NOFOLLOW: i32 = 0o100000;
#[cfg(all(
    target_os = "linux",
    not(any(
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "powerpc",
        target_arch = "powerpc64"
    ))
))]
pub const O_NOFOLLOW: i32 = 0o400000;
/// `O_NOFOLLOW` on the BSDs and macOS.
#[cfg(not(target_os = "linux"))]
pub const O_NOFOLLOW: i32 = 0x100;

/// Creates `path` for writing; fails if anything exists there, a symlink included (`O_EXCL`
/// never follows one). Mode 0600, set explicitly after creation so no umask can widen or
/// narrow it.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .custom_flags(O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain(path, e))?;
    f.set_permissions(Permissions::from_mode(PRIVATE_MODE))?;
    Ok(f)
}

/// Opens `path` to append, creating it (mode 0600, see [`create_new_private`]) if missing. An
/// existing file is used as it is, unless it is a symlink (refused, never followed) or not a
/// regular file.
pub fn append_private(path: &Path) -> io::Result<File> {
    match create_new_private(path) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let f = OpenOptions::new()
        .append(true)
        .custom_flags(O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain(path, e))?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Removes a leftover `path` (a temporary file of a crashed run) if there is one. Removing a
/// symlink removes the link, never what it points to.
pub fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A refusal to follow a symlink (`ELOOP`) said in words.
fn explain(path: &Path, e: io::Error) -> io::Error {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && e.kind() != io::ErrorKind::AlreadyExists {
        io::Error::new(
            e.kind(),
            format!(
                "{} is a symbolic link; the agent never writes through one: point the setting at the real file",
                path.display()
            ),
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("healert-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn created_private_and_never_through_a_symlink() {
        let d = dir("private");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        // Exclusive creation refuses the link (and anything else already there).
        let e = create_new_private(&link).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // Appending refuses it too, and says why.
        let e = append_private(&link).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // A dangling link is not followed either.
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        assert!(append_private(&dangling).is_err());
        assert!(!d.join("nowhere").exists());

        let p = d.join("new");
        append_private(&p).unwrap().write_all(b"a\n").unwrap();
        append_private(&p).unwrap().write_all(b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nb\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert!(
            append_private(&d).is_err(),
            "a directory is not appended to"
        );

        remove_stale(&link).unwrap();
        remove_stale(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
