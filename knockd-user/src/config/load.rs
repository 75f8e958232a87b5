//! Reading a config file, in the form its name says: TOML for `.toml`, knockd.conf's grammar
//! otherwise.

use std::path::Path;

use crate::config::{Config, ConfigError, knockd_form, toml_form};

impl Config {
    /// Reads and parses a knockd.conf file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::whole(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parses a config: the TOML form for a `.toml` file, knockd.conf grammar otherwise;
    /// `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config = if path.extension().is_some_and(|e| e == "toml") {
            toml_form::parse(path, text)
        } else {
            knockd_form::parse(path, text)
        }?;
        // In a fleet, a secret door's single use is claimed across the fleet before it opens.
        let fleet = config.options.fleet.is_some();
        for secret in config.doors.iter_mut().filter_map(|d| d.secret.as_mut()) {
            secret.fleet_claim = fleet;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/knockd.conf")).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/knockd.conf: cannot read:"), "{e}");
    }
}
