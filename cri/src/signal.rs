//! KEP-4960 stop signals: the CRI's `Signal` enum ⇄ the signal names that
//! container records keep (`SIGTERM`, `SIGRTMIN+3`).

use berth_proto::cri::Signal;
use berth_runtime::signal::StopSignal;

use crate::{RequestError, invalid};

/// The signal a new container is stopped with: `stop_signal` of its config,
/// else the image's StopSignal (checked earlier), else none recorded
/// (SIGTERM).
pub fn for_container(requested: i32, image: Option<&str>) -> Result<Option<String>, RequestError> {
    let signal = Signal::try_from(requested)
        .map_err(|_| invalid("stop_signal", format!("{requested} is not a known signal")))?;
    if signal == Signal::RuntimeDefault {
        return Ok(image.map(str::to_string));
    }
    // `SIGRTMINPLUS3` is `SIGRTMIN+3` to everybody else.
    let name = signal
        .as_str_name()
        .replace("PLUS", "+")
        .replace("MINUS", "-");
    StopSignal::parse(&name)
        .map(|s| Some(s.name()))
        .map_err(|_| {
            invalid(
                "stop_signal",
                format!("{name} is not a signal of this host"),
            )
        })
}

/// `ContainerStatus.stop_signal`: the signal StopContainer sends (SIGTERM
/// when neither the config nor the image named one).
pub fn status_value(recorded: Option<&str>) -> i32 {
    let signal = recorded
        .and_then(|text| StopSignal::parse(text).ok())
        .unwrap_or(StopSignal::TERM);
    let name = signal.name().replace('+', "PLUS").replace('-', "MINUS");
    Signal::from_str_name(&name).map_or(Signal::RuntimeDefault as i32, |s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_wins_over_the_image_and_sigterm_is_the_default() {
        let quit = Signal::Sigquit as i32;
        assert_eq!(
            for_container(quit, Some("SIGUSR1")).unwrap().as_deref(),
            Some("SIGQUIT")
        );
        assert_eq!(
            for_container(Signal::RuntimeDefault as i32, Some("SIGUSR1"))
                .unwrap()
                .as_deref(),
            Some("SIGUSR1")
        );
        assert_eq!(for_container(0, None).unwrap(), None);
        let err = for_container(999, None).unwrap_err();
        assert!(err.to_string().starts_with("stop_signal: "), "{err}");
    }

    #[test]
    fn real_time_and_alias_signals_map_both_ways() {
        let rt = for_container(Signal::Sigrtminplus3 as i32, None).unwrap();
        assert_eq!(rt.as_deref(), Some("SIGRTMIN+3"));
        assert_eq!(status_value(rt.as_deref()), Signal::Sigrtminplus3 as i32);
        assert_eq!(
            status_value(Some("SIGRTMAX-2")),
            Signal::Sigrtmaxminus2 as i32
        );
        // An image's numeric StopSignal, and none at all.
        assert_eq!(status_value(Some("3")), Signal::Sigquit as i32);
        assert_eq!(status_value(None), Signal::Sigterm as i32);
        // Aliases print as their signal's first name.
        let cld = for_container(Signal::Sigcld as i32, None).unwrap();
        assert_eq!(cld.as_deref(), Some("SIGCHLD"));
        assert_eq!(status_value(cld.as_deref()), Signal::Sigchld as i32);
    }
}
