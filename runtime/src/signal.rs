//! Stop signals by name or number, as images (`StopSignal`) and the CRI
//! (`stop_signal`) give them, real-time ones included: nix's `Signal` has
//! no `SIGRTMIN+n`, so a signal is its number here.

use std::fmt;

/// A signal number that Linux knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(i32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stop signal {0:?}")]
pub struct BadSignal(pub String);

/// Names first as they are printed back; aliases after their signal.
const NAMES: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGILL", libc::SIGILL),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGABRT", libc::SIGABRT),
    ("SIGIOT", libc::SIGIOT),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGSTKFLT", libc::SIGSTKFLT),
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGCLD", libc::SIGCHLD),
    ("SIGCONT", libc::SIGCONT),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGURG", libc::SIGURG),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGIO", libc::SIGIO),
    ("SIGPOLL", libc::SIGPOLL),
    ("SIGPWR", libc::SIGPWR),
    ("SIGSYS", libc::SIGSYS),
];

impl StopSignal {
    pub const TERM: StopSignal = StopSignal(libc::SIGTERM);
    pub const KILL: StopSignal = StopSignal(libc::SIGKILL);

    /// `SIGTERM`, `TERM`, `term`, `15`, `SIGRTMIN+3`, `RTMAX-1`: every
    /// spelling Docker images use.
    pub fn parse(text: &str) -> Result<StopSignal, BadSignal> {
        let bad = || BadSignal(text.to_string());
        let number = match text.parse::<i32>() {
            Ok(n) => n,
            Err(_) => {
                let upper = text.trim().to_ascii_uppercase();
                let name = upper.strip_prefix("SIG").unwrap_or(&upper);
                realtime(name)
                    .or_else(|| {
                        NAMES
                            .iter()
                            .find(|(known, _)| &known[3..] == name)
                            .map(|(_, n)| *n)
                    })
                    .ok_or_else(bad)?
            }
        };
        if (1..=libc::SIGRTMAX()).contains(&number) {
            Ok(StopSignal(number))
        } else {
            Err(bad())
        }
    }

    pub fn number(self) -> i32 {
        self.0
    }

    /// The canonical name: `SIGTERM`, `SIGRTMIN+3`, `SIGRTMAX-2`.
    pub fn name(self) -> String {
        if let Some((name, _)) = NAMES.iter().find(|(_, n)| *n == self.0) {
            return (*name).to_string();
        }
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        match self.0 {
            n if n == min => "SIGRTMIN".into(),
            n if n == max => "SIGRTMAX".into(),
            n if n - min <= max - n => format!("SIGRTMIN+{}", n - min),
            n => format!("SIGRTMAX-{}", max - n),
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// `RTMIN`, `RTMIN+n`, `RTMAX`, `RTMAX-n` (glibc's SIGRTMIN, 34 on Linux
/// with NPTL, not the kernel's 32).
fn realtime(name: &str) -> Option<i32> {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        min + offset(rest, '+')?
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        max - offset(rest, '-')?
    } else {
        return None;
    };
    (min..=max).contains(&n).then_some(n)
}

fn offset(rest: &str, sign: char) -> Option<i32> {
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix(sign)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_docker_spelling_parses() {
        assert_eq!(
            StopSignal::parse("SIGQUIT").unwrap().number(),
            libc::SIGQUIT
        );
        assert_eq!(StopSignal::parse("usr1").unwrap().number(), libc::SIGUSR1);
        assert_eq!(StopSignal::parse("9").unwrap(), StopSignal::KILL);
        assert_eq!(StopSignal::parse("SIGCLD").unwrap().number(), libc::SIGCHLD);
        assert!(StopSignal::parse("SIGNOPE").is_err());
        assert!(StopSignal::parse("0").is_err());
        assert!(StopSignal::parse("65").is_err());
    }

    #[test]
    fn real_time_signals_round_trip_by_name() {
        let min = libc::SIGRTMIN();
        let max = libc::SIGRTMAX();
        assert_eq!(StopSignal::parse("SIGRTMIN+3").unwrap().number(), min + 3);
        assert_eq!(StopSignal::parse("rtmax-1").unwrap().number(), max - 1);
        assert_eq!(StopSignal::parse("SIGRTMIN").unwrap().name(), "SIGRTMIN");
        for n in min..=max {
            let signal = StopSignal::parse(&n.to_string()).unwrap();
            assert_eq!(StopSignal::parse(&signal.name()).unwrap(), signal);
        }
        assert!(StopSignal::parse("SIGRTMIN+99").is_err());
        assert_eq!(StopSignal::parse("15").unwrap().name(), "SIGTERM");
    }
}
