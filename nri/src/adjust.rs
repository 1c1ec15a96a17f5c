//! Container adjustments: those of several plugins merged, a field set by
//! two of them refused naming both (as the reference), and the result
//! applied to the OCI spec before it is written.
//!
//! A key with a leading `-` (annotation, mount destination, env name,
//! device path, namespace type) removes that entry and releases its
//! ownership, so a later plugin may set it again.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::Error;
use crate::api::{self, ContainerAdjustment, Field, LinuxResources};

/// The adjustments of the plugins that answered CreateContainer, in the
/// order they answered (plugin index order).
#[derive(Debug, Default)]
pub struct Merged {
    container: String,
    owners: HashMap<(Field, String), String>,
    parts: Vec<(String, ContainerAdjustment)>,
}

fn removal(key: &str) -> Option<&str> {
    key.strip_prefix('-')
}

impl Merged {
    pub fn new(container: &str) -> Merged {
        Merged {
            container: container.to_string(),
            ..Merged::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Checks `adjust` against what earlier plugins set and keeps it.
    pub fn add(&mut self, plugin: &str, adjust: ContainerAdjustment) -> Result<(), Error> {
        if adjust == ContainerAdjustment::default() {
            return Ok(());
        }
        let unsupported = |what| Error::Unsupported {
            plugin: plugin.to_string(),
            what,
            container: self.container.clone(),
        };
        if !adjust.cdi_devices.is_empty() {
            return Err(unsupported("CDI devices"));
        }
        let mut claims: Vec<(Field, String)> = Vec::new();
        fn keyed<'a>(
            claims: &mut Vec<(Field, String)>,
            field: Field,
            keys: impl Iterator<Item = &'a String>,
        ) {
            claims.extend(keys.map(|key| (field, key.clone())));
        }
        keyed(&mut claims, Field::Annotations, adjust.annotations.keys());
        keyed(
            &mut claims,
            Field::Mounts,
            adjust.mounts.iter().map(|m| &m.destination),
        );
        keyed(&mut claims, Field::Env, adjust.env.iter().map(|e| &e.key));
        keyed(
            &mut claims,
            Field::Rlimits,
            adjust.rlimits.iter().map(|r| &r.r#type),
        );
        if !adjust.args.is_empty() {
            claims.push((Field::Args, String::new()));
        }
        if let Some(linux) = &adjust.linux {
            let unsupported_linux = [
                (!linux.cgroups_path.is_empty(), "a cgroups path"),
                (linux.io_priority.is_some(), "an I/O priority"),
                (linux.seccomp_policy.is_some(), "a seccomp policy"),
                (!linux.net_devices.is_empty(), "network devices"),
                (linux.scheduler.is_some(), "a scheduler policy"),
                (linux.rdt.is_some(), "RDT"),
                (linux.memory_policy.is_some(), "a memory policy"),
            ];
            if let Some((_, what)) = unsupported_linux.iter().find(|(set, _)| *set) {
                return Err(unsupported(what));
            }
            keyed(
                &mut claims,
                Field::Devices,
                linux.devices.iter().map(|d| &d.path),
            );
            keyed(&mut claims, Field::Sysctl, linux.sysctl.keys());
            keyed(
                &mut claims,
                Field::Namespace,
                linux.namespaces.iter().map(|n| &n.r#type),
            );
            if linux.oom_score_adj.is_some() {
                claims.push((Field::OomScoreAdj, String::new()));
            }
            if let Some(resources) = &linux.resources {
                resource_claims(resources, &mut claims).map_err(unsupported)?;
            }
        }
        for (field, key) in claims {
            match removal(&key) {
                Some(cleared) => {
                    self.owners.remove(&(field, cleared.to_string()));
                }
                None => match self.owners.get(&(field, key.clone())) {
                    Some(owner) if owner != plugin => {
                        return Err(Error::Conflict {
                            first: owner.clone(),
                            second: plugin.to_string(),
                            field: describe(field, &key),
                            container: self.container.clone(),
                        });
                    }
                    _ => {
                        self.owners.insert((field, key), plugin.to_string());
                    }
                },
            }
        }
        self.parts.push((plugin.to_string(), adjust));
        Ok(())
    }

    /// All plugins' adjustments as one, for validators.
    pub fn combined(&self) -> ContainerAdjustment {
        let mut all = ContainerAdjustment::default();
        for (_, part) in &self.parts {
            all.annotations.extend(part.annotations.clone());
            all.mounts.extend(part.mounts.clone());
            all.env.extend(part.env.clone());
            all.rlimits.extend(part.rlimits.clone());
            if !part.args.is_empty() {
                all.args.clone_from(&part.args);
            }
            if let Some(hooks) = &part.hooks {
                let into = all.hooks.get_or_insert_default();
                into.prestart.extend(hooks.prestart.clone());
                into.create_runtime.extend(hooks.create_runtime.clone());
                into.create_container.extend(hooks.create_container.clone());
                into.start_container.extend(hooks.start_container.clone());
                into.poststart.extend(hooks.poststart.clone());
                into.poststop.extend(hooks.poststop.clone());
            }
            if let Some(linux) = &part.linux {
                let into = all.linux.get_or_insert_default();
                into.devices.extend(linux.devices.clone());
                into.sysctl.extend(linux.sysctl.clone());
                into.namespaces.extend(linux.namespaces.clone());
                if linux.oom_score_adj.is_some() {
                    into.oom_score_adj = linux.oom_score_adj;
                }
                if let Some(resources) = &linux.resources {
                    let mut merged = into.resources.take().unwrap_or_default();
                    merge_resources(&mut merged, resources);
                    into.resources = Some(merged);
                }
            }
        }
        all
    }

    /// Who set what, in the validators' form.
    pub fn owners(&self) -> api::OwningPlugins {
        let mut owners = api::FieldOwners::default();
        for ((field, key), plugin) in &self.owners {
            if key.is_empty() {
                owners.simple.insert(*field as i32, plugin.clone());
            } else {
                owners
                    .compound
                    .entry(*field as i32)
                    .or_default()
                    .owners
                    .insert(key.clone(), plugin.clone());
            }
        }
        api::OwningPlugins {
            owners: HashMap::from([(self.container.clone(), owners)]),
        }
    }

    /// Applies every adjustment, in order, to the OCI spec as JSON.
    /// `own_oom_score_adj` is berthd's: a container's may not be lower.
    pub fn apply(&self, spec: &mut Value, own_oom_score_adj: i32) -> Result<(), Error> {
        for (plugin, part) in &self.parts {
            apply_one(spec, part, own_oom_score_adj).map_err(|reason| Error::Invalid {
                plugin: plugin.clone(),
                reason: format!("container {}: {reason}", self.container),
            })?;
        }
        Ok(())
    }
}

fn describe(field: Field, key: &str) -> String {
    let name = field.as_str_name();
    if key.is_empty() {
        name.to_string()
    } else {
        format!("{name} {key:?}")
    }
}

fn resource_claims(
    resources: &LinuxResources,
    claims: &mut Vec<(Field, String)>,
) -> Result<(), &'static str> {
    let mut simple = |set: bool, field: Field| {
        if set {
            claims.push((field, String::new()));
        }
    };
    if let Some(memory) = &resources.memory {
        if memory.kernel.is_some() || memory.kernel_tcp.is_some() {
            return Err("a kernel memory limit");
        }
        if memory.disable_oom_killer.is_some() || memory.use_hierarchy.is_some() {
            return Err("cgroup v1 memory flags");
        }
        simple(memory.limit.is_some(), Field::MemLimit);
        simple(memory.reservation.is_some(), Field::MemReservation);
        simple(memory.swap.is_some(), Field::MemSwapLimit);
        simple(memory.swappiness.is_some(), Field::MemSwappiness);
    }
    if let Some(cpu) = &resources.cpu {
        if cpu.realtime_runtime.is_some() || cpu.realtime_period.is_some() {
            return Err("realtime CPU limits");
        }
        simple(cpu.shares.is_some(), Field::CpuShares);
        simple(cpu.quota.is_some(), Field::CpuQuota);
        simple(cpu.period.is_some(), Field::CpuPeriod);
        simple(!cpu.cpus.is_empty(), Field::CpuSetCpUs);
        simple(!cpu.mems.is_empty(), Field::CpuSetMems);
    }
    if resources.blockio_class.is_some() || resources.rdt_class.is_some() {
        return Err("a block I/O or RDT class");
    }
    if !resources.devices.is_empty() {
        return Err("device cgroup rules (give devices instead)");
    }
    simple(resources.pids.is_some(), Field::PidsLimit);
    for limit in &resources.hugepage_limits {
        claims.push((Field::HugepageLimits, limit.page_size.clone()));
    }
    for key in resources.unified.keys() {
        claims.push((Field::CgroupsUnified, key.clone()));
    }
    Ok(())
}

/// `new`'s set fields over `old`'s: what an update asks for on top.
pub fn merge_resources(old: &mut LinuxResources, new: &LinuxResources) {
    if let Some(memory) = &new.memory {
        let into = old.memory.get_or_insert_default();
        macro_rules! set {
            ($($f:ident),*) => { $( if memory.$f.is_some() { into.$f = memory.$f; } )* };
        }
        set!(limit, reservation, swap, swappiness);
    }
    if let Some(cpu) = &new.cpu {
        let into = old.cpu.get_or_insert_default();
        if cpu.shares.is_some() {
            into.shares = cpu.shares;
        }
        if cpu.quota.is_some() {
            into.quota = cpu.quota;
        }
        if cpu.period.is_some() {
            into.period = cpu.period;
        }
        if !cpu.cpus.is_empty() {
            into.cpus.clone_from(&cpu.cpus);
        }
        if !cpu.mems.is_empty() {
            into.mems.clone_from(&cpu.mems);
        }
    }
    if new.pids.is_some() {
        old.pids = new.pids;
    }
    for limit in &new.hugepage_limits {
        old.hugepage_limits
            .retain(|l| l.page_size != limit.page_size);
        old.hugepage_limits.push(limit.clone());
    }
    old.unified.extend(new.unified.clone());
}

/// The object at `path` in `value`, made (as objects) where missing.
fn object<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut at = value;
    for key in path {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        at = at
            .as_object_mut()
            .expect("made an object above")
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !at.is_object() {
        *at = Value::Object(Map::new());
    }
    at.as_object_mut().expect("made an object above")
}

/// The array under `key` of `object`, made where missing.
fn array<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let at = object
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !at.is_array() {
        *at = Value::Array(Vec::new());
    }
    at.as_array_mut().expect("made an array above")
}

fn apply_one(spec: &mut Value, adjust: &ContainerAdjustment, own_oom: i32) -> Result<(), String> {
    let annotations = object(spec, &["annotations"]);
    for (key, value) in &adjust.annotations {
        match removal(key) {
            Some(key) => annotations.remove(key),
            None => annotations.insert(key.clone(), json!(value)),
        };
    }
    if !adjust.mounts.is_empty() {
        let mounts = array(
            spec.as_object_mut().ok_or("the spec is not an object")?,
            "mounts",
        );
        for mount in &adjust.mounts {
            let destination = removal(&mount.destination).unwrap_or(&mount.destination);
            if !destination.starts_with('/') {
                return Err(format!("mount destination {destination:?} is not absolute"));
            }
            mounts.retain(|m| m["destination"] != json!(destination));
            if removal(&mount.destination).is_none() {
                mounts.push(json!({
                    "destination": mount.destination,
                    "type": mount.r#type,
                    "source": mount.source,
                    "options": mount.options,
                }));
            }
        }
    }
    let process = object(spec, &["process"]);
    if !adjust.args.is_empty() {
        process.insert("args".into(), json!(adjust.args));
    }
    if !adjust.env.is_empty() {
        let env = array(process, "env");
        for entry in &adjust.env {
            let name = removal(&entry.key).unwrap_or(&entry.key);
            if name.is_empty() || name.contains('=') {
                return Err(format!("invalid env name {name:?}"));
            }
            let prefix = format!("{name}=");
            env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with(&prefix)));
            if removal(&entry.key).is_none() {
                env.push(json!(format!("{name}={}", entry.value)));
            }
        }
    }
    if !adjust.rlimits.is_empty() {
        let rlimits = array(process, "rlimits");
        for rlimit in &adjust.rlimits {
            if !rlimit.r#type.starts_with("RLIMIT_") {
                return Err(format!("invalid rlimit type {:?}", rlimit.r#type));
            }
            rlimits.retain(|r| r["type"] != json!(rlimit.r#type));
            rlimits.push(json!({"type": rlimit.r#type, "hard": rlimit.hard, "soft": rlimit.soft}));
        }
    }
    if let Some(hooks) = &adjust.hooks {
        let into = object(spec, &["hooks"]);
        for (name, list) in [
            ("prestart", &hooks.prestart),
            ("createRuntime", &hooks.create_runtime),
            ("createContainer", &hooks.create_container),
            ("startContainer", &hooks.start_container),
            ("poststart", &hooks.poststart),
            ("poststop", &hooks.poststop),
        ] {
            for hook in list {
                if !hook.path.starts_with('/') {
                    return Err(format!("hook path {:?} is not absolute", hook.path));
                }
                let mut entry = json!({"path": hook.path});
                if !hook.args.is_empty() {
                    entry["args"] = json!(hook.args);
                }
                if !hook.env.is_empty() {
                    entry["env"] = json!(hook.env);
                }
                if let Some(timeout) = hook.timeout {
                    entry["timeout"] = json!(timeout.value);
                }
                array(into, name).push(entry);
            }
        }
    }
    if let Some(linux) = &adjust.linux {
        apply_linux(spec, linux, own_oom)?;
    }
    Ok(())
}

fn apply_linux(
    spec: &mut Value,
    linux: &api::LinuxContainerAdjustment,
    own_oom: i32,
) -> Result<(), String> {
    if let Some(oom) = linux.oom_score_adj {
        let wanted = i32::try_from(oom.value)
            .ok()
            .filter(|v| (-1000..=1000).contains(v))
            .ok_or_else(|| format!("oom_score_adj {} is out of range", oom.value))?;
        // As for the CRI's: never below berthd's own, which it cannot lower.
        object(spec, &["process"]).insert("oomScoreAdj".into(), json!(wanted.max(own_oom)));
    }
    let l = object(spec, &["linux"]);
    for (key, value) in &linux.sysctl {
        object_in(l, "sysctl").insert(key.clone(), json!(value));
    }
    for ns in &linux.namespaces {
        let typ = removal(&ns.r#type).unwrap_or(&ns.r#type).to_string();
        let namespaces = array(l, "namespaces");
        namespaces.retain(|n| n["type"] != json!(typ));
        if removal(&ns.r#type).is_none() {
            let mut entry = json!({"type": typ});
            if !ns.path.is_empty() {
                entry["path"] = json!(ns.path);
            }
            namespaces.push(entry);
        }
    }
    for device in &linux.devices {
        let path = removal(&device.path).unwrap_or(&device.path).to_string();
        let devices = array(l, "devices");
        devices.retain(|d| d["path"] != json!(path));
        if removal(&device.path).is_some() {
            continue;
        }
        if !matches!(device.r#type.as_str(), "c" | "b" | "u" | "p") {
            return Err(format!("device {path:?}: invalid type {:?}", device.r#type));
        }
        let mut entry = json!({
            "path": path,
            "type": device.r#type,
            "major": device.major,
            "minor": device.minor,
        });
        if let Some(mode) = device.file_mode {
            entry["fileMode"] = json!(mode.value);
        }
        if let Some(uid) = device.uid {
            entry["uid"] = json!(uid.value);
        }
        if let Some(gid) = device.gid {
            entry["gid"] = json!(gid.value);
        }
        devices.push(entry);
        // The device cgroup must let the container use it.
        let rules = array(object_in(l, "resources"), "devices");
        rules.push(json!({
            "allow": true,
            "type": device.r#type,
            "major": device.major,
            "minor": device.minor,
            "access": "rwm",
        }));
    }
    if let Some(resources) = &linux.resources {
        apply_resources(object_in(l, "resources"), resources)?;
    }
    Ok(())
}

fn object_in<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let at = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !at.is_object() {
        *at = Value::Object(Map::new());
    }
    at.as_object_mut().expect("made an object above")
}

/// LinuxResources onto the spec's `linux.resources`.
pub fn apply_resources(
    into: &mut Map<String, Value>,
    resources: &LinuxResources,
) -> Result<(), String> {
    if let Some(memory) = &resources.memory {
        let m = object_in(into, "memory");
        if let Some(limit) = memory.limit {
            if limit.value < 0 && limit.value != -1 {
                return Err(format!("memory limit {} is negative", limit.value));
            }
            m.insert("limit".into(), json!(limit.value));
        }
        if let Some(v) = memory.reservation {
            m.insert("reservation".into(), json!(v.value));
        }
        if let Some(v) = memory.swap {
            m.insert("swap".into(), json!(v.value));
        }
        if let Some(v) = memory.swappiness {
            m.insert("swappiness".into(), json!(v.value));
        }
    }
    if let Some(cpu) = &resources.cpu {
        let c = object_in(into, "cpu");
        if let Some(v) = cpu.shares {
            c.insert("shares".into(), json!(v.value));
        }
        if let Some(v) = cpu.quota {
            c.insert("quota".into(), json!(v.value));
        }
        if let Some(v) = cpu.period {
            c.insert("period".into(), json!(v.value));
        }
        if !cpu.cpus.is_empty() {
            c.insert("cpus".into(), json!(cpu.cpus));
        }
        if !cpu.mems.is_empty() {
            c.insert("mems".into(), json!(cpu.mems));
        }
    }
    if let Some(pids) = resources.pids {
        object_in(into, "pids").insert("limit".into(), json!(pids.limit));
    }
    if !resources.hugepage_limits.is_empty() {
        let limits = array(into, "hugepageLimits");
        for limit in &resources.hugepage_limits {
            limits.retain(|l| l["pageSize"] != json!(limit.page_size));
            limits.push(json!({"pageSize": limit.page_size, "limit": limit.limit}));
        }
    }
    for (key, value) in &resources.unified {
        object_in(into, "unified").insert(key.clone(), json!(value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KeyValue, LinuxContainerAdjustment, LinuxMemory, OptionalInt64};

    fn env(key: &str, value: &str) -> ContainerAdjustment {
        ContainerAdjustment {
            env: vec![KeyValue {
                key: key.into(),
                value: value.into(),
            }],
            ..Default::default()
        }
    }

    fn memory(limit: i64) -> ContainerAdjustment {
        ContainerAdjustment {
            linux: Some(LinuxContainerAdjustment {
                resources: Some(LinuxResources {
                    memory: Some(LinuxMemory {
                        limit: Some(OptionalInt64 { value: limit }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn two_plugins_setting_one_field_are_refused_naming_both() {
        let mut merged = Merged::new("c1");
        merged.add("10-a", memory(1 << 20)).unwrap();
        let err = merged.add("20-b", memory(2 << 20)).unwrap_err().to_string();
        assert!(
            err.contains("\"10-a\"") && err.contains("\"20-b\""),
            "{err}"
        );
        assert!(err.contains("MemLimit") && err.contains("c1"), "{err}");
        let mut merged = Merged::new("c1");
        merged.add("10-a", env("X", "1")).unwrap();
        let err = merged.add("20-b", env("X", "2")).unwrap_err().to_string();
        assert!(err.contains("Env \"X\""), "{err}");
        // Another key is no conflict; a removal releases the key.
        merged.add("20-b", env("Y", "2")).unwrap();
        merged.add("30-c", env("-X", "")).unwrap();
        merged.add("40-d", env("X", "4")).unwrap();
    }

    #[test]
    fn adjustments_apply_in_order_onto_the_spec() {
        let mut merged = Merged::new("c1");
        merged.add("10-a", env("A", "1")).unwrap();
        merged.add("20-b", env("-PATH", "")).unwrap();
        merged.add("30-c", memory(1 << 20)).unwrap();
        let mut spec = json!({"process": {"env": ["PATH=/bin", "A=0"]}, "linux": {}});
        merged.apply(&mut spec, -500).unwrap();
        assert_eq!(spec["process"]["env"], json!(["A=1"]));
        assert_eq!(
            spec["linux"]["resources"]["memory"]["limit"],
            json!(1 << 20)
        );
    }

    #[test]
    fn unsupported_adjustments_are_refused_not_dropped() {
        let mut merged = Merged::new("c1");
        let adjust = ContainerAdjustment {
            cdi_devices: vec![api::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            ..Default::default()
        };
        let err = merged.add("10-a", adjust).unwrap_err().to_string();
        assert!(err.contains("CDI devices"), "{err}");
    }
}
