//! systemd as the node tests see it: `systemctl` and the units it knows.

use std::process::Command;

/// `systemctl <args>`'s output; a failing call fails the test.
pub fn systemctl(args: &[&str]) -> String {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .expect("run systemctl");
    assert!(
        out.status.success(),
        "systemctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `systemctl show -p <property> --value <unit>`.
pub fn show(unit: &str, property: &str) -> String {
    systemctl(&["show", "-p", property, "--value", unit])
}

/// Every unit systemd knows (loaded, active or not) whose name holds one
/// of `needles`.
pub fn units_with(needles: &[&str]) -> Vec<String> {
    systemctl(&[
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--no-pager",
    ])
    .lines()
    .filter_map(|line| line.split_whitespace().next())
    .filter(|unit| needles.iter().any(|n| unit.contains(n)))
    .map(str::to_string)
    .collect()
}

/// [`units_with`]'s scopes and slices only. (Not mount units: systemd
/// mirrors every mount, the pod's namespace pins too, and drops those
/// units on its own once unmounted.)
pub fn scopes_and_slices_with(needles: &[&str]) -> Vec<String> {
    units_with(needles)
        .into_iter()
        .filter(|unit| unit.ends_with(".scope") || unit.ends_with(".slice"))
        .collect()
}
