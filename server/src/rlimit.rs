//! berthd's open-file limit. Every container costs berthd descriptors
//! (shim sockets, log and exec pipes, streaming connections), and the usual
//! soft limit of 1024 runs out long before a node's pod limit does: the
//! soft limit is raised to the hard one (which the unit's `LimitNOFILE` or
//! the parent set) at start-up.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("cannot read RLIMIT_NOFILE: {0}")]
    Read(nix::Error),
    #[error("cannot raise the soft RLIMIT_NOFILE from {soft} to the hard limit {hard}: {source}")]
    Raise {
        soft: u64,
        hard: u64,
        source: nix::Error,
    },
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now
/// in force.
pub fn raise_nofile() -> Result<u64, RlimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(RlimitError::Read)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| RlimitError::Raise {
        soft,
        hard,
        source,
    })?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let low = hard.min(256);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
        assert_eq!(raise_nofile().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        // Already at the hard limit: nothing to change.
        assert_eq!(raise_nofile().unwrap(), hard);
    }
}
