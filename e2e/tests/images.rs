//! ImageService against a real registry (Debian's docker-registry on loopback).

use berth_e2e::can_run;
use berth_e2e::registry::{self, Registry, Security};

#[test]
fn registry_serves_the_fixtures() {
    if !can_run(
        registry::available(),
        "docker-registry, skopeo, jq, zstd, openssl, htpasswd",
    ) {
        return;
    }
    let plain = Registry::start(Security::Plain);
    let tls = Registry::start(Security::TlsAuth);
    for (r, extra) in [
        (&plain, vec![]),
        (
            &tls,
            vec![format!("--creds={}:{}", registry::USER, registry::PASSWORD)],
        ),
    ] {
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(extra)
            .arg(format!("docker://{}", r.image("multiarch")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("arm64"));
    }
}
