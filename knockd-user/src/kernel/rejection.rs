//! Loading one program of the object (XDP or TC), with a refusal reported as what it is: the
//! verifier's rejection (its last lines, and the whole log saved to a file), or a missing
//! capability. Neither is ever blamed on the other.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{Program, ProgramError},
};

/// Lines of the verifier's log shown in the error; the rest is in the file.
const TAIL_LINES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "the kernel's verifier rejected the {kind} program {program} ({errno:?}); its last lines:\n{tail}\n{saved}"
    )]
    Rejected {
        kind: &'static str,
        program: String,
        /// The syscall's error, shown by name: the verifier's `EACCES` reads "Permission
        /// denied", which is not about permissions.
        errno: nix::errno::Errno,
        tail: String,
        /// Where the whole log is, or why it could not be written.
        saved: String,
    },
    #[error(
        "the kernel refused to load the {kind} program {program}: operation not permitted; knockd needs \
         CAP_BPF and CAP_NET_ADMIN (run it as root)"
    )]
    NotPermitted { kind: &'static str, program: String },
    #[error("program {0} is missing from the XDP object")]
    Missing(String),
    #[error("program {program}: {error}")]
    Program { program: String, error: ProgramError },
}

/// Loads the program `name` of `ebpf` (XDP or TC) into the kernel. A verifier rejection
/// writes the whole log to `logs/verifier-NAME.log`.
pub fn load_program(ebpf: &mut Ebpf, name: &str, logs: &Path) -> Result<(), LoadError> {
    let program = || name.to_owned();
    let prog = ebpf.program_mut(name).ok_or_else(|| LoadError::Missing(program()))?;
    let (kind, loaded) = match prog {
        Program::Xdp(p) => ("XDP", p.load()),
        Program::SchedClassifier(p) => ("TC", p.load()),
        _ => return Err(LoadError::Program { program: program(), error: ProgramError::UnexpectedProgramType }),
    };
    match loaded {
        Ok(()) => Ok(()),
        Err(ProgramError::LoadError { io_error, verifier_log }) => {
            let log = verifier_log.to_string();
            if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
                // Refused before the verifier ran: the capability checks.
                return Err(LoadError::NotPermitted { kind, program: program() });
            }
            let path = logs.join(format!("verifier-{name}.log"));
            let saved = match std::fs::create_dir_all(logs).and_then(|()| std::fs::write(&path, &log)) {
                Ok(()) => format!("the whole verifier log: {}", path.display()),
                Err(e) => format!("the whole verifier log could not be written to {}: {e}", path.display()),
            };
            let errno = nix::errno::Errno::from_raw(io_error.raw_os_error().unwrap_or(0));
            Err(LoadError::Rejected { kind, program: program(), errno, tail: tail(&log), saved })
        }
        Err(error) => Err(LoadError::Program { program: program(), error }),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Where logs of a test or a benchmark go: the system's temporary directory.
#[must_use]
pub fn scratch_logs() -> PathBuf {
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_that_say_something() {
        let log = (0..20).map(|i| format!("{i}: (b7) r0 = 0\n")).collect::<Vec<_>>().join("\n");
        let want: Vec<String> = (20 - TAIL_LINES..20).map(|i| format!("    {i}: (b7) r0 = 0")).collect();
        assert_eq!(tail(&log), want.join("\n"));
        assert_eq!(tail("invalid access to packet\n"), "    invalid access to packet");
        assert_eq!(tail(""), "");
    }
}
