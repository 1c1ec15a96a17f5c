//! UpdatePodSandboxResources' request → the pod-level limits to apply:
//! the sum of the containers' resources (`resources`) and the pod's
//! `overhead`, as the kubelet sizes a pod cgroup.

use berth_proto::cri::LinuxContainerResources;
use berth_sandbox::resize::PodLimits;

use crate::{RequestError, invalid};

/// CFS periods the kernel accepts, in microseconds.
const PERIODS: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
const DEFAULT_PERIOD: i64 = 100_000;
/// cgroup v1's share range.
const MAX_SHARES: i64 = 262_144;

/// Without `resources` nothing changes; with them, a zero memory limit or
/// a quota of zero or less lifts that limit (a container without one makes
/// the pod unlimited), and zero shares keep the current weight.
pub fn limits(
    resources: Option<&LinuxContainerResources>,
    overhead: Option<&LinuxContainerResources>,
) -> Result<PodLimits, RequestError> {
    let Some(r) = resources else {
        return Ok(PodLimits::default());
    };
    let zero = LinuxContainerResources::default();
    let o = overhead.unwrap_or(&zero);
    for (prefix, res) in [("resources", r), ("overhead", o)] {
        if res.memory_limit_in_bytes < 0 {
            return Err(invalid(
                format!("{prefix}.memory_limit_in_bytes"),
                format!("{} is negative", res.memory_limit_in_bytes),
            ));
        }
        if res.cpu_shares < 0 || res.cpu_shares > MAX_SHARES {
            return Err(invalid(
                format!("{prefix}.cpu_shares"),
                format!("{} is outside 0..={MAX_SHARES}", res.cpu_shares),
            ));
        }
        if res.cpu_quota > 0 && res.cpu_period != 0 && !PERIODS.contains(&res.cpu_period) {
            return Err(invalid(
                format!("{prefix}.cpu_period"),
                format!(
                    "{} is outside {}..={} microseconds",
                    res.cpu_period,
                    PERIODS.start(),
                    PERIODS.end()
                ),
            ));
        }
    }
    let memory = (r.memory_limit_in_bytes > 0)
        .then(|| (r.memory_limit_in_bytes + o.memory_limit_in_bytes) as u64);
    let period = |res: &LinuxContainerResources| {
        if res.cpu_period == 0 {
            DEFAULT_PERIOD
        } else {
            res.cpu_period
        }
    };
    let cpu = (r.cpu_quota > 0).then(|| {
        let p = period(r);
        // The overhead's quota over the pod's period.
        let extra = if o.cpu_quota > 0 {
            o.cpu_quota * p / period(o)
        } else {
            0
        };
        ((r.cpu_quota + extra).max(1_000) as u64, p as u64)
    });
    let shares = (r.cpu_shares > 0)
        .then(|| (r.cpu_shares + o.cpu_shares.max(0)).clamp(2, MAX_SHARES) as u64);
    Ok(PodLimits {
        memory: Some(memory),
        cpu: Some(cpu),
        cpu_shares: shares,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(memory: i64, quota: i64, period: i64, shares: i64) -> LinuxContainerResources {
        LinuxContainerResources {
            memory_limit_in_bytes: memory,
            cpu_quota: quota,
            cpu_period: period,
            cpu_shares: shares,
            ..Default::default()
        }
    }

    #[test]
    fn resources_and_overhead_add_up() {
        let limits = limits(
            Some(&res(256 << 20, 150_000, 100_000, 1536)),
            Some(&res(64 << 20, 25_000, 50_000, 512)),
        )
        .unwrap();
        assert_eq!(limits.memory, Some(Some(320 << 20)));
        assert_eq!(limits.cpu, Some(Some((200_000, 100_000))));
        assert_eq!(limits.cpu_shares, Some(2048));
    }

    #[test]
    fn zeros_lift_limits_and_no_resources_change_nothing() {
        let lifted = limits(Some(&res(0, 0, 0, 0)), None).unwrap();
        assert_eq!(
            lifted,
            PodLimits {
                memory: Some(None),
                cpu: Some(None),
                cpu_shares: None
            }
        );
        assert_eq!(
            limits(None, Some(&res(1, 1, 1, 1))).unwrap(),
            PodLimits::default()
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (r, o, field) in [
            (
                res(-1, 0, 0, 0),
                res(0, 0, 0, 0),
                "resources.memory_limit_in_bytes",
            ),
            (res(0, 0, 0, -2), res(0, 0, 0, 0), "resources.cpu_shares"),
            (
                res(0, 50_000, 10, 0),
                res(0, 0, 0, 0),
                "resources.cpu_period",
            ),
            (
                res(0, 0, 0, 0),
                res(-5, 0, 0, 0),
                "overhead.memory_limit_in_bytes",
            ),
        ] {
            let err = limits(Some(&r), Some(&o)).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
        }
    }
}
