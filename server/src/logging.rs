//! Log output: human text or one JSON object per line, filtered by the
//! configured level, which a config reload can change.

use std::io::IsTerminal;

use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

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

/// Changes the level of the installed subscriber.
#[derive(Clone)]
pub struct LevelHandle(reload::Handle<EnvFilter, Registry>);

impl LevelHandle {
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives(level)).map_err(|err| err.to_string())?;
        self.0.reload(filter).map_err(|err| err.to_string())
    }
}

pub fn init(level: &str, format: LogFormat) -> LevelHandle {
    // The config was validated, so the filter parses.
    let filter = EnvFilter::try_new(directives(level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // The level filters the output only: the step timeline (crate::steps)
    // is kept at every level.
    use crate::steps::{StepFilter, StepLayer};
    let subscriber = tracing_subscriber::registry();
    match format {
        LogFormat::Text => subscriber
            .with(output.with_filter(filter))
            .with(StepLayer.with_filter(StepFilter))
            .init(),
        LogFormat::Json => subscriber
            .with(output.json().flatten_event(true).with_filter(filter))
            .with(StepLayer.with_filter(StepFilter))
            .init(),
    }
    LevelHandle(handle)
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
