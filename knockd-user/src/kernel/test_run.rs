//! Running the loaded program on a frame (`BPF_PROG_TEST_RUN`) at either hook, with the
//! verdict as XDP says it: for the kernel tests and the benchmark.

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use knock_common::{XDP_DROP, XDP_PASS};

use crate::kernel::{
    error::KernelError,
    hooks::Hook,
    program::{KnockProgram, TC_PROGRAM},
};

/// The TC verdicts the TC programs return: drop, or on to the next filter and the stack.
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;

impl KnockProgram {
    /// Runs the program at `hook` once on `frame` with `BPF_PROG_TEST_RUN`; returns the verdict
    /// as XDP says it (TC's `TC_ACT_SHOT` is `XDP_DROP`, its `TC_ACT_UNSPEC` `XDP_PASS`). At
    /// TC the frame must hold an Ethernet header (the kernel refuses a shorter one), and the
    /// TC programs must be loaded (`load_tc`).
    pub fn test_run(&self, hook: Hook, frame: &[u8]) -> Result<u32, KernelError> {
        Ok(self.test_run_timed(hook, frame, 1)?.0)
    }

    /// Runs the program at `hook` `repeat` times on `frame`; returns the verdict (as
    /// `test_run` does) and the kernel's mean time per run.
    pub fn test_run_timed(
        &self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), KernelError> {
        let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
        match hook {
            Hook::Xdp => {
                let r = self.xdp()?.test_run(opts)?;
                Ok((r.return_value, r.duration))
            }
            Hook::Tc => {
                let prog: &SchedClassifier =
                    self.ebpf.program(TC_PROGRAM).ok_or(KernelError::MissingProgram(TC_PROGRAM))?.try_into()?;
                let r = prog.test_run(opts)?;
                #[expect(clippy::cast_possible_wrap, reason = "a TC verdict is an i32 returned as u32")]
                let verdict = match r.return_value as i32 {
                    TC_ACT_SHOT => XDP_DROP,
                    TC_ACT_UNSPEC => XDP_PASS,
                    other => return Err(KernelError::Verdict(other)),
                };
                Ok((verdict, r.duration))
            }
        }
    }
}
