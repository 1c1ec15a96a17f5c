//! Log output: human text or one JSON object per line, filtered by the
//! configured level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Berth's own crates: a bare level applies to these, while dependencies
/// (h2, hyper, tonic) stay at `warn` so `debug` shows Berth, not HTTP/2 frames.
const OWN_CRATES: [&str; 5] = [
    "berthd",
    "berth_image",
    "berth_sandbox",
    "berth_cni",
    "berth_runtime",
];

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

pub fn init(level: &str, format: LogFormat) {
    // The config was validated, so the filter parses.
    let filter = EnvFilter::try_new(directives(level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Expands a bare level to per-crate directives; anything else is taken as
/// directives already.
fn directives(level: &str) -> String {
    let bare = level.trim().to_ascii_lowercase();
    if !LEVELS.contains(&bare.as_str()) {
        return level.to_string();
    }
    let mut out = String::from("warn");
    for krate in OWN_CRATES {
        out.push_str(&format!(",{krate}={bare}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn bare_level_applies_to_berth_crates_only() {
        assert_eq!(
            directives("debug"),
            "warn,berthd=debug,berth_image=debug,berth_sandbox=debug,berth_cni=debug,berth_runtime=debug"
        );
        assert_eq!(directives("h2=trace,info"), "h2=trace,info");
    }
}
