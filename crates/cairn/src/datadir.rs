//! The data dir holds the JWT secret, every conversation and every document of
//! every tenant: only Cairn's user may read it. It is created (or tightened)
//! to mode 0700 and its files to 0600, whatever the process umask; files the
//! stores create later live inside the 0700 directory.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) with mode 0700, or tightens it to 0700.
pub fn create_private(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Sets every file under `dir` to 0600 and every directory to 0700 (the
/// stores open their files with the umask's mode). Bounded by the tree the
/// service itself wrote; symlinks are not followed.
pub fn restrict(dir: &Path) -> std::io::Result<()> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700))?;
                stack.push(entry.path());
            } else if kind.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data/nested");
        create_private(&dir).unwrap();
        std::fs::write(dir.join("memory.redb"), b"x").unwrap();
        std::fs::set_permissions(
            dir.join("memory.redb"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::create_dir(dir.join("kb")).unwrap();
        std::fs::write(dir.join("kb/segment"), b"x").unwrap();
        restrict(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("memory.redb")), 0o600);
        assert_eq!(mode(&dir.join("kb")), 0o700);
        assert_eq!(mode(&dir.join("kb/segment")), 0o600);
    }
}
