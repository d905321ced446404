//! Where a byte is: [`Position`] names a byte in one particular file, whatever its current
//! name, and [`FileId`] is that file's identity (device, inode and a fingerprint of its first
//! bytes, so a reused inode is not mistaken for the old file). Upstream of everything that
//! stores or acknowledges positions (the follower hands them out; the queue and the
//! checkpoint keep them), so neither imports the other.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::source::Place;

/// Identity of one audit log file, independent of its current name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// Hash of the first `fingerprint_len` bytes of the file (0 bytes: empty file so far).
    pub fingerprint: u64,
    pub fingerprint_len: u32,
}

impl FileId {
    /// Same inode on the same device. The fingerprint may have grown since (a file's
    /// fingerprint covers more bytes once it is longer), so equal `dev`/`ino` with equal
    /// `fingerprint_len` must also have equal fingerprints; different lengths are accepted
    /// here and verified against the file itself with [`fingerprint_matches`].
    pub fn same_file(&self, other: &FileId) -> bool {
        self.dev == other.dev
            && self.ino == other.ino
            && (self.fingerprint_len != other.fingerprint_len
                || self.fingerprint == other.fingerprint)
    }
}

/// A byte offset in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub file: FileId,
    pub offset: u64,
}

impl Place for Position {
    /// Same offset in the same file, whose fingerprint may have grown since.
    fn same_place(&self, other: &Position) -> bool {
        self.offset == other.offset && self.file.same_file(&other.file)
    }
}

/// The fingerprint covers at most this many leading bytes of a file. Long enough that two
/// audit logs never share it (the first line carries a unique auditID and timestamp), short
/// enough to re-hash cheaply.
pub const FINGERPRINT_MAX: u32 = 1024;

/// FNV-1a, 64 bit: std-only, fast enough for 1 KiB fingerprints and checkpoint checksums.
/// Not a defence against an attacker (who could write the log or the checkpoint anyway).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Identity of an open file: device and inode from `fstat`, and the FNV-1a hash of its first
/// `min(len, FINGERPRINT_MAX)` bytes (read with `pread`, the file's cursor is not moved).
pub fn file_id(file: &File) -> io::Result<FileId> {
    let meta = file.metadata()?;
    let want = meta.len().min(u64::from(FINGERPRINT_MAX)) as usize;
    let mut head = [0u8; FINGERPRINT_MAX as usize];
    let got = read_head(file, &mut head[..want])?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        fingerprint: fnv1a64(&head[..got]),
        fingerprint_len: got as u32,
    })
}

/// Whether `file`'s first `id.fingerprint_len` bytes still hash to `id.fingerprint` (false if
/// the file is now shorter: it was truncated or it is another file on a reused inode).
pub fn fingerprint_matches(file: &File, id: &FileId) -> io::Result<bool> {
    let want = id.fingerprint_len.min(FINGERPRINT_MAX) as usize;
    let mut head = [0u8; FINGERPRINT_MAX as usize];
    let got = read_head(file, &mut head[..want])?;
    Ok(got == want && fnv1a64(&head[..got]) == id.fingerprint)
}

/// Reads up to `buf.len()` bytes from offset 0; fewer only at end of file.
fn read_head(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_fingerprint() {
        let dir = std::env::temp_dir().join(format!("healert-fid-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"").unwrap();
        let f = File::open(&p).unwrap();
        let empty = file_id(&f).unwrap();
        assert_eq!(empty.fingerprint_len, 0);
        std::fs::write(&p, vec![b'x'; 3000]).unwrap();
        let full = file_id(&f).unwrap();
        assert_eq!(full.fingerprint_len, FINGERPRINT_MAX);
        assert_eq!(full.fingerprint, fnv1a64(&[b'x'; 1024]));
        assert!(fingerprint_matches(&f, &empty).unwrap());
        assert!(fingerprint_matches(&f, &full).unwrap());
        assert!(full.same_file(&empty));
        std::fs::write(&p, vec![b'y'; 3000]).unwrap();
        assert!(!fingerprint_matches(&f, &full).unwrap());
        std::fs::write(&p, b"xx").unwrap();
        assert!(!fingerprint_matches(&f, &full).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
