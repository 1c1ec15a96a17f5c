//! The CRI v1 protocol as Berth speaks it.
//!
//! Generated at build time by `tonic-prost-build` from the upstream
//! `api.proto` vendored in `api/runtime/v1/` (see `api/README.md` for its
//! version and licence). This crate is the one place the rest of the
//! workspace imports the messages, servers and clients from.

/// CRI `runtime.v1`: messages, `runtime_service_server`, `image_service_server`
/// and their clients.
#[allow(clippy::all, clippy::pedantic)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// NRI `nri.pkg.api.v1alpha1`: the messages of the plugin API; the ttrpc
/// services are berth-nri's.
#[allow(clippy::all, clippy::pedantic)]
pub mod nri {
    tonic::include_proto!("nri.pkg.api.v1alpha1");
}

/// cri-api marks these fields `debug_redact`: they never reach a log.
impl std::fmt::Debug for cri::AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &str| if secret.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("auth", &redacted(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &redacted(&self.identity_token))
            .field("registry_token", &redacted(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::cri::AuthConfig;

    #[test]
    fn credentials_are_redacted_in_debug_output() {
        let auth = AuthConfig {
            username: "u".into(),
            password: "hunter2".into(),
            auth: "dTpodW50ZXIy".into(),
            server_address: "registry.example".into(),
            identity_token: "id-token".into(),
            registry_token: "reg-token".into(),
        };
        let text = format!("{auth:?}");
        for secret in ["hunter2", "dTpodW50ZXIy", "id-token", "reg-token"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(
            text.contains("registry.example") && text.contains("\"u\""),
            "{text}"
        );
    }
}
