//! CPU time of processes, from `/proc`: the operator's, and the control plane's components'.
//!
//! Wall-clock times on this shared machine move with the hour; the CPU the API server spends on
//! a run moves much less, and it is what the operator's requests cost the cluster.

use std::ops::Sub;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sluice_tests::controlplane::ControlPlane;

/// CPU seconds of the control plane's components, taken at one moment or between two.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ControlPlaneCpu {
    /// kube-apiserver's.
    pub api_server: f64,
    /// etcd's.
    pub etcd: f64,
    /// Every component's together: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    /// and kwok.
    pub total: f64,
}

impl ControlPlaneCpu {
    /// The CPU time each component has used since it started.
    pub fn sample(control_plane: &ControlPlane) -> Result<Self> {
        let mut sample = Self::default();
        for (name, pid) in control_plane.component_pids() {
            let seconds = cpu_seconds(pid).with_context(|| format!("cannot read {name}'s CPU time"))?;
            match name {
                "kube-apiserver" => sample.api_server = seconds,
                "etcd" => sample.etcd = seconds,
                _ => {}
            }
            sample.total += seconds;
        }
        Ok(sample)
    }
}

impl Sub for ControlPlaneCpu {
    type Output = Self;

    fn sub(self, earlier: Self) -> Self {
        Self {
            api_server: self.api_server - earlier.api_server,
            etcd: self.etcd - earlier.etcd,
            total: self.total - earlier.total,
        }
    }
}

/// User plus system CPU time of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name, in parentheses, may contain spaces: count fields after its end.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    let (Some(user), Some(system)) = (fields.get(11), fields.get(12)) else {
        bail!("/proc/{pid}/stat is shorter than expected");
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((user.parse::<f64>()? + system.parse::<f64>()?) / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_a_later_sample_is_not_smaller() {
        let first = cpu_seconds(std::process::id()).unwrap();
        let mut spin = 0u64;
        for step in 0..20_000_000u64 {
            spin = spin.wrapping_add(step).rotate_left(1);
        }
        std::hint::black_box(spin);
        let second = cpu_seconds(std::process::id()).unwrap();
        assert!(second >= first, "{second} < {first}");
        assert!(second > 0.0);
    }

    #[test]
    fn a_missing_process_is_an_error_that_names_it() {
        let error = cpu_seconds(u32::MAX).unwrap_err();
        assert!(error.to_string().contains(&u32::MAX.to_string()), "{error:#}");
    }
}
