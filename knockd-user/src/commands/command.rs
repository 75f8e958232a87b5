//! One command of a door: `%IP%` substitution and `/bin/sh -c`, logged like knockd. What
//! runs when, and how many at once, is `keeper`'s.

use std::net::IpAddr;

use crate::observe::log::KnockLog;

/// Replaces every `%IP%` with the address. The address is a parsed `IpAddr`, so its text
/// is only digits, dots, colons and hex: nothing a shell would interpret.
#[must_use]
pub fn substitute(cmd: &str, ip: IpAddr) -> String {
    cmd.replace("%IP%", &ip.to_string())
}

/// Runs `cmd` through `/bin/sh -c`, logging like knockd. Returns the exit code if any.
pub async fn run(log: &KnockLog, door: &str, cmd: &str) -> Option<i32> {
    log.line(&format!("{door}: running command: {cmd}"));
    match tokio::process::Command::new("/bin/sh").arg("-c").arg(cmd).status().await {
        Ok(status) => {
            let code = status.code();
            if !status.success() {
                let shown = code.map_or_else(|| format!("{status}"), |c| c.to_string());
                log.line(&format!("{door}: command returned non-zero status code ({shown})"));
            }
            code
        }
        Err(e) => {
            log.line(&format!("error: command fork failed! ({door}: {e})"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_substitution_everywhere_and_compressed_v6() {
        let v4: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(substitute("a %IP% b %IP%", v4), "a 198.18.0.2 b 198.18.0.2");
        let v6: IpAddr = "2001:db8:0:0::2".parse().unwrap();
        assert_eq!(substitute("-s %IP%", v6), "-s 2001:db8::2");
        assert_eq!(substitute("%ip% stays", v4), "%ip% stays", "the token is case-sensitive");
    }
}
