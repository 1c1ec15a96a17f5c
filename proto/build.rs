//! Generates the CRI v1 messages, servers and clients from the vendored
//! `api/runtime/v1/api.proto`, and the NRI messages from `api/nri/api.proto`
//! (protoc from the system: `hack/setup.sh` installs protobuf-compiler).

use std::path::PathBuf;

/// The field option cri-api marks credentials with. Debian 12's protoc
/// (3.21) predates it and refuses the file, and prost ignores it anyway:
/// it is taken out of a copy, and `AuthConfig`'s `Debug` redacts by hand
/// (src/lib.rs).
const DEBUG_REDACT: &str = " [debug_redact = true]";

fn main() {
    let vendored = "api/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={vendored}");
    let text =
        std::fs::read_to_string(vendored).unwrap_or_else(|e| panic!("cannot read {vendored}: {e}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = out.join("api");
    let copy = include.join("runtime/v1/api.proto");
    std::fs::create_dir_all(copy.parent().expect("a parent")).expect("create the proto dir");
    std::fs::write(&copy, text.replace(DEBUG_REDACT, "")).expect("write the proto copy");
    tonic_prost_build::configure()
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_protos(&[copy], &[include])
        .unwrap_or_else(|e| panic!("cannot generate the CRI from {vendored}: {e}"));
    // NRI: messages only; its services run over ttrpc (berth-nri).
    let nri = "api/nri/api.proto";
    println!("cargo:rerun-if-changed={nri}");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(&[nri], &["api/nri"])
        .unwrap_or_else(|e| panic!("cannot generate NRI from {nri}: {e}"));
}
