//! The units Berth itself asks systemd for with the systemd cgroup driver
//! (containers' scopes are the OCI runtime's): a pod's slice when nothing
//! (the kubelet) made it first, and the scope of a shared-PID pod's infra
//! process. All through the manager's D-Bus API on the system bus, never by
//! writing into systemd's cgroup tree.

use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// How long a unit may take to reach the state asked: systemd runs jobs
/// one by one, and the node VM's is 10-20x slower than a real node.
const JOB_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd on the system bus for unit {unit}: {source}")]
    Connect {
        unit: String,
        source: Box<zbus::Error>,
    },
    #[error("systemd {method} of unit {unit} failed: {source}")]
    Call {
        method: &'static str,
        unit: String,
        source: Box<zbus::Error>,
    },
    #[error("unit {unit} is {state}, not {wanted}, after {waited:?}")]
    State {
        unit: String,
        state: String,
        wanted: &'static str,
        waited: Duration,
    },
}

/// The state of `unit`: `active`, `inactive`, `failed`, ...; `None` when
/// systemd has no such unit loaded.
pub async fn active_state(unit: &str) -> Result<Option<String>, SystemdError> {
    let bus = connect(unit).await?;
    state(&bus, unit).await
}

/// Starts the transient slice `slice` and waits until it is active.
pub async fn start_slice(slice: &str) -> Result<(), SystemdError> {
    let properties = vec![
        (
            "Description",
            Value::from(format!("Berth pod slice {slice}")),
        ),
        // A failed unit would otherwise stay listed until reset-failed.
        ("CollectMode", Value::from("inactive-or-failed")),
    ];
    start_transient(slice, properties).await
}

/// Starts the transient scope `scope` in `slice` holding process `pid`
/// (berthd's child, moved by systemd) and waits until it is active.
pub async fn start_scope(scope: &str, slice: &str, pid: u32) -> Result<(), SystemdError> {
    let properties = vec![
        (
            "Description",
            Value::from(format!("Berth pod infra {scope}")),
        ),
        ("Slice", Value::from(slice)),
        ("PIDs", Value::from(vec![pid])),
        ("CollectMode", Value::from("inactive-or-failed")),
    ];
    start_transient(scope, properties).await
}

/// Sets a pod slice's limits as unit properties (runtime only, as the
/// kubelet does), which systemd writes to the slice's cgroup files.
pub async fn set_slice_limits(
    slice: &str,
    limits: &crate::resize::PodLimits,
) -> Result<(), SystemdError> {
    // systemd's "infinity" for these properties.
    const INFINITY: u64 = u64::MAX;
    let mut properties: Vec<(&str, Value)> = Vec::new();
    if let Some(memory) = limits.memory {
        properties.push(("MemoryMax", Value::from(memory.unwrap_or(INFINITY))));
    }
    if let Some(cpu) = limits.cpu {
        let per_sec = cpu.map_or(INFINITY, |(quota, period)| {
            quota.saturating_mul(1_000_000) / period.max(1)
        });
        properties.push(("CPUQuotaPerSecUSec", Value::from(per_sec)));
        if let Some((_, period)) = cpu {
            properties.push(("CPUQuotaPeriodUSec", Value::from(period)));
        }
    }
    if let Some(shares) = limits.cpu_shares {
        let weight = berth_host::cgroup::shares_to_weight(shares);
        properties.push(("CPUWeight", Value::from(weight)));
    }
    if properties.is_empty() {
        return Ok(());
    }
    let bus = connect(slice).await?;
    bus.call_method(
        Some(DESTINATION),
        MANAGER_PATH,
        Some(MANAGER),
        "SetUnitProperties",
        &(slice, true, properties),
    )
    .await
    .map_err(|source| SystemdError::Call {
        method: "SetUnitProperties",
        unit: slice.to_string(),
        source: Box::new(source),
    })?;
    Ok(())
}

async fn start_transient(
    unit: &str,
    properties: Vec<(&str, Value<'_>)>,
) -> Result<(), SystemdError> {
    let bus = connect(unit).await?;
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    bus.call_method(
        Some(DESTINATION),
        MANAGER_PATH,
        Some(MANAGER),
        "StartTransientUnit",
        &(unit, "fail", properties, aux),
    )
    .await
    .map_err(|source| SystemdError::Call {
        method: "StartTransientUnit",
        unit: unit.to_string(),
        source: Box::new(source),
    })?;
    wait(&bus, unit, "active").await
}

/// Stops `unit` and waits until systemd has dropped it; a unit that is not
/// there is fine.
pub async fn stop(unit: &str) -> Result<(), SystemdError> {
    let bus = connect(unit).await?;
    if state(&bus, unit).await?.is_none() {
        return Ok(());
    }
    match bus
        .call_method(
            Some(DESTINATION),
            MANAGER_PATH,
            Some(MANAGER),
            "StopUnit",
            &(unit, "replace"),
        )
        .await
    {
        Ok(_) => {}
        Err(err) if is_no_such_unit(&err) => return Ok(()),
        Err(source) => {
            return Err(SystemdError::Call {
                method: "StopUnit",
                unit: unit.to_string(),
                source: Box::new(source),
            });
        }
    }
    wait(&bus, unit, "gone").await
}

async fn connect(unit: &str) -> Result<zbus::Connection, SystemdError> {
    zbus::Connection::system()
        .await
        .map_err(|source| SystemdError::Connect {
            unit: unit.to_string(),
            source: Box::new(source),
        })
}

fn is_no_such_unit(err: &zbus::Error) -> bool {
    matches!(err, zbus::Error::MethodError(name, _, _) if name.as_str() == NO_SUCH_UNIT)
}

async fn state(bus: &zbus::Connection, unit: &str) -> Result<Option<String>, SystemdError> {
    let call = |method: &'static str| {
        move |source| SystemdError::Call {
            method,
            unit: unit.to_string(),
            source: Box::new(source),
        }
    };
    let path: OwnedObjectPath = match bus
        .call_method(
            Some(DESTINATION),
            MANAGER_PATH,
            Some(MANAGER),
            "GetUnit",
            &(unit,),
        )
        .await
    {
        Ok(reply) => reply.body().deserialize().map_err(call("GetUnit"))?,
        Err(err) if is_no_such_unit(&err) => return Ok(None),
        Err(err) => return Err(call("GetUnit")(err)),
    };
    let reply = bus
        .call_method(
            Some(DESTINATION),
            path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(UNIT, "ActiveState"),
        )
        .await;
    let value: OwnedValue = match reply {
        Ok(reply) => reply
            .body()
            .deserialize()
            .map_err(call("Get ActiveState"))?,
        // Collected between the two calls.
        Err(zbus::Error::MethodError(..)) => return Ok(None),
        Err(err) => return Err(call("Get ActiveState")(err)),
    };
    let state = String::try_from(value)
        .map_err(|err| call("Get ActiveState")(zbus::Error::Variant(err)))?;
    Ok(Some(state))
}

/// Polls until `unit` is `wanted` (`gone`: no longer loaded). Polling,
/// not the manager's JobRemoved signal: a unit can reach the state by
/// other jobs than ours, and this stays one round trip per step.
async fn wait(
    bus: &zbus::Connection,
    unit: &str,
    wanted: &'static str,
) -> Result<(), SystemdError> {
    let start = Instant::now();
    loop {
        let state = state(bus, unit).await?;
        let done = match &state {
            None => wanted == "gone",
            // A stopped transient unit is collected at once; inactive is
            // as good as gone for one systemd keeps loaded.
            Some(s) => s == wanted || (wanted == "gone" && s == "inactive"),
        };
        if done {
            return Ok(());
        }
        let failed = state.as_deref() == Some("failed") && wanted == "active";
        if failed || start.elapsed() >= JOB_WAIT {
            return Err(SystemdError::State {
                unit: unit.to_string(),
                state: state.unwrap_or_else(|| "not loaded".into()),
                wanted,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
