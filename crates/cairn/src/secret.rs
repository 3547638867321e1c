//! Where the HS256 secret comes from: `auth.jwt_secret`, else the variable named
//! by `auth.jwt_secret_env`, else a secret generated once in the data dir
//! (`jwt-secret`, mode 0600) — development mode, announced at start-up.

use cairn_core::config::AuthConfig;
use rand::RngCore;
use std::path::Path;

/// The resolved secret.
pub struct Secret {
    /// The key bytes.
    pub bytes: Vec<u8>,
    /// True when it was generated in the data dir (no auth configured).
    pub generated: bool,
}

/// File name of the generated secret.
pub const SECRET_FILE: &str = "jwt-secret";

/// Resolves the secret; errors name the config key or variable at fault.
pub fn resolve(
    auth: &AuthConfig,
    data_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Secret> {
    if let Some(s) = &auth.jwt_secret {
        return Ok(Secret {
            bytes: s.as_bytes().to_vec(),
            generated: false,
        });
    }
    if let Some(var) = &auth.jwt_secret_env {
        let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "auth.jwt_secret_env names `{var}`, but that environment variable is not set"
            )
        })?;
        anyhow::ensure!(
            value.len() >= 16,
            "the secret in `{var}` must be at least 16 characters"
        );
        return Ok(Secret {
            bytes: value.into_bytes(),
            generated: false,
        });
    }
    let path = data_dir.join(SECRET_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        anyhow::ensure!(
            existing.len() >= 32,
            "{} is damaged; delete it to generate a new one",
            path.display()
        );
        return Ok(Secret {
            bytes: existing.into_bytes(),
            generated: true,
        });
    }
    crate::datadir::create_private(data_dir)?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &hex)?;
    Ok(Secret {
        bytes: hex.into_bytes(),
        generated: true,
    })
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
