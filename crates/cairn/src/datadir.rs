//! The data dir holds the JWT secret, every conversation and every document of
//! every tenant: only Cairn's user may read it. A missing data dir is created
//! with mode 0700, and Cairn's own entries in it (the `.redb` stores, the
//! generated secret, the `knowledge-*` stores) are set to 0600 (directories
//! 0700), whatever the process umask. An existing directory is left as its
//! owner made it (it may be shared, e.g. `--data-dir .`), with a warning when
//! others can read it; nothing of anyone else's in it is touched.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) with mode 0700 when it is missing; warns
/// when an existing one is open to others.
pub fn create_private(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %dir.display(),
                mode = format!("{mode:o}"),
                "the data dir is open to other users; Cairn's files in it are 0600, but consider chmod 700"
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// True for the entries of a data dir that Cairn writes.
fn is_cairns(name: &str) -> bool {
    name.ends_with(".redb") || name == "jwt-secret" || name.starts_with("knowledge-")
}

/// Sets Cairn's entries under `dir` to 0600 (files) and 0700 (directories,
/// recursively; the stores open their files with the umask's mode). Symlinks
/// are not followed; other entries are not touched.
pub fn restrict(dir: &Path) -> std::io::Result<()> {
    let mut stack = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_cairns(&entry.file_name().to_string_lossy()) {
            stack.push((entry.path(), entry.file_type()?));
        }
    }
    while let Some((path, kind)) = stack.pop() {
        if kind.is_dir() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                stack.push((entry.path(), entry.file_type()?));
            }
        } else if kind.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
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
        std::fs::create_dir(dir.join("knowledge-bm25")).unwrap();
        std::fs::write(dir.join("knowledge-bm25/segment"), b"x").unwrap();
        // Someone else's file in a shared directory is left alone.
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::set_permissions(
            dir.join("notes.txt"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        restrict(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("memory.redb")), 0o600);
        assert_eq!(mode(&dir.join("knowledge-bm25")), 0o700);
        assert_eq!(mode(&dir.join("knowledge-bm25/segment")), 0o600);
        assert_eq!(mode(&dir.join("notes.txt")), 0o644);
    }
}
