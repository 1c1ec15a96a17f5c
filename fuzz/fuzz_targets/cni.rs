//! CNI network configs (conf dir files, cached ADD configs) and plugin
//! results: parsing never panics.
#![no_main]

use std::path::Path;

use berth_cni::NetworkConfigList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = Path::new("fuzz.conflist");
    let _ = NetworkConfigList::parse(source, data, false);
    let _ = NetworkConfigList::parse(source, data, true);
    let _ = NetworkConfigList::from_cached(source, data);
    if let Ok(result) = serde_json::from_slice(data) {
        let _ = berth_cni::pod_ips(&result);
    }
});
