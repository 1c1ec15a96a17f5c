//! Running one plugin binary the way the spec says: parameters in the
//! environment, the network config on stdin, a result or a JSON error on
//! stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("CNI plugin {plugin:?} not found in {}", dirs_list(.dirs))]
    NotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("cannot run CNI plugin {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} timed out after {timeout:?}")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    /// The plugin's own error, as it reported it.
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: Option<u64>,
        message: String,
    },
    #[error("CNI plugin {plugin} {command} returned an invalid result: {message}")]
    BadResult {
        plugin: String,
        command: &'static str,
        message: String,
    },
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spec's error object.
#[derive(Debug, Deserialize)]
struct PluginError {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Where a plugin is: the first bin dir holding an executable of that name.
pub fn find_plugin(kind: &str, dirs: &[PathBuf]) -> Result<PathBuf, ExecError> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|dir| dir.join(kind))
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| ExecError::NotFound {
            plugin: kind.to_string(),
            dirs: dirs.to_vec(),
        })
}

/// The per-invocation parameters (`CNI_*` variables).
pub struct Invocation<'a> {
    pub command: &'static str,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// Runs `plugin` with `config` on stdin; returns its stdout (empty for DEL
/// and CHECK).
pub async fn run(plugin: &Path, config: &[u8], inv: &Invocation<'_>) -> Result<Vec<u8>, ExecError> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = std::env::join_paths(inv.bin_dirs)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = tokio::process::Command::new(plugin)
        .env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            path: plugin.to_path_buf(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let config = config.to_vec();
    let io = async move {
        // A plugin may exit without reading stdin; its error is on stdout.
        let _ = stdin.write_all(&config).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(inv.timeout, io).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => {
            return Err(ExecError::Spawn {
                path: plugin.to_path_buf(),
                source,
            });
        }
        Err(_) => {
            return Err(ExecError::Timeout {
                plugin: name,
                command: inv.command,
                timeout: inv.timeout,
            });
        }
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    let message = match serde_json::from_slice::<PluginError>(&output.stdout) {
        Ok(err) if !err.msg.is_empty() => {
            let mut message = err.msg;
            if !err.details.is_empty() {
                message = format!("{message}: {}", err.details);
            }
            return Err(ExecError::Plugin {
                plugin: name,
                command: inv.command,
                code: err.code,
                message,
            });
        }
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            format!(
                "{} (stdout: {:?}, stderr: {:?})",
                output.status,
                stdout.trim(),
                stderr.trim()
            )
        }
    };
    Err(ExecError::Plugin {
        plugin: name,
        command: inv.command,
        code: None,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake plugin (fault injection): a shell script in a temp dir. It is
    /// written by `install`, not by this process: a test thread forking
    /// meanwhile would inherit our write descriptor and make the exec fail
    /// with ETXTBSY.
    fn plugin(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        let source = dir.join(format!("{name}.src"));
        std::fs::write(&source, format!("#!/bin/sh\n{body}\n")).unwrap();
        let status = std::process::Command::new("install")
            .args(["-m", "0755"])
            .arg(&source)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "install {}", path.display());
        path
    }

    fn invocation(dirs: &[PathBuf], timeout: Duration) -> Invocation<'_> {
        Invocation {
            command: "ADD",
            container_id: "c1",
            netns: Path::new("/run/netns/x"),
            ifname: "eth0",
            args: "IgnoreUnknown=1",
            bin_dirs: dirs,
            timeout,
        }
    }

    #[tokio::test]
    async fn parameters_go_in_the_environment_and_config_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let p = plugin(
            dir.path(),
            "echo-env",
            r#"read -r conf; printf '{"cmd":"%s","id":"%s","ifname":"%s","conf":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_IFNAME" "$conf""#,
        );
        let out = run(
            &p,
            b"{\"a\":1}\n",
            &invocation(&dirs, Duration::from_secs(10)),
        )
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cmd"], "ADD");
        assert_eq!(v["id"], "c1");
        assert_eq!(v["ifname"], "eth0");
        assert_eq!(v["conf"]["a"], 1);
    }

    #[tokio::test]
    async fn a_plugin_error_keeps_its_code_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let p = plugin(
            dir.path(),
            "fails",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"pool busy"}'; exit 1"#,
        );
        let err = run(&p, b"{}", &invocation(&dirs, Duration::from_secs(10)))
            .await
            .unwrap_err();
        match &err {
            ExecError::Plugin { code, message, .. } => {
                assert_eq!(*code, Some(11));
                assert_eq!(message, "try again later: pool busy");
            }
            other => panic!("{other:?}"),
        }
        let p = plugin(dir.path(), "crashes", "echo oops >&2; exit 3");
        let err = run(&p, b"{}", &invocation(&dirs, Duration::from_secs(10)))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("crashes ADD failed") && err.contains("oops"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_hung_plugin_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let p = plugin(dir.path(), "hangs", "exec sleep 30");
        let err = run(&p, b"{}", &invocation(&dirs, Duration::from_millis(200)))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("hangs ADD timed out"), "{err}");
    }

    #[test]
    fn plugins_are_found_in_dir_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        plugin(b.path(), "bridge", "true");
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(
            find_plugin("bridge", &dirs).unwrap(),
            b.path().join("bridge")
        );
        plugin(a.path(), "bridge", "true");
        assert_eq!(
            find_plugin("bridge", &dirs).unwrap(),
            a.path().join("bridge")
        );
        let err = find_plugin("nope", &dirs).unwrap_err().to_string();
        assert!(err.starts_with("CNI plugin \"nope\" not found in"), "{err}");
    }
}
