//! SPDY/3.1 flow control: every stream and the session (stream 0) have a
//! send window and a receive window, 64 KiB at first. DATA spends them;
//! WINDOW_UPDATE gives credit back.

/// The initial window of streams and the session.
pub const DEFAULT_WINDOW: u32 = 64 << 10;
/// Windows cannot grow past 2^31 - 1.
pub const MAX_WINDOW: i64 = 0x7fff_ffff;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("peer sent {sent} bytes into a window of {window}")]
    Overrun { sent: u32, window: i64 },
    #[error("WINDOW_UPDATE of {delta} grows the window past 2^31-1")]
    Overflow { delta: u32 },
}

/// What we may still send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    /// May go negative when the peer shrinks the initial window.
    size: i64,
}

impl SendWindow {
    pub fn new(initial: u32) -> SendWindow {
        SendWindow {
            size: initial as i64,
        }
    }

    pub fn available(&self) -> u32 {
        self.size.clamp(0, MAX_WINDOW) as u32
    }

    /// Takes up to `wanted` bytes of room; returns how many were granted.
    pub fn take(&mut self, wanted: u32) -> u32 {
        let n = wanted.min(self.available());
        self.size -= n as i64;
        n
    }

    /// A WINDOW_UPDATE from the peer.
    pub fn credit(&mut self, delta: u32) -> Result<(), FlowError> {
        if self.size + delta as i64 > MAX_WINDOW {
            return Err(FlowError::Overflow { delta });
        }
        self.size += delta as i64;
        Ok(())
    }

    /// SETTINGS_INITIAL_WINDOW_SIZE changed from `old` to `new`.
    pub fn reinitialize(&mut self, old: u32, new: u32) {
        self.size += new as i64 - old as i64;
    }
}

/// What the peer may still send us, and when to tell it there is more room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    size: i64,
    initial: u32,
    /// Consumed since the last WINDOW_UPDATE.
    consumed: u32,
}

impl RecvWindow {
    pub fn new(initial: u32) -> RecvWindow {
        RecvWindow {
            size: initial as i64,
            initial,
            consumed: 0,
        }
    }

    pub fn size(&self) -> i64 {
        self.size
    }

    /// `n` bytes arrived; an overrun is a flow-control error.
    pub fn receive(&mut self, n: u32) -> Result<(), FlowError> {
        if n as i64 > self.size {
            return Err(FlowError::Overrun {
                sent: n,
                window: self.size,
            });
        }
        self.size -= n as i64;
        Ok(())
    }

    /// The application took `n` bytes; returns the WINDOW_UPDATE delta to
    /// send once half the initial window has been used (batching updates).
    pub fn consumed(&mut self, n: u32) -> Option<u32> {
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed >= self.initial / 2 {
            let delta = self.consumed;
            self.consumed = 0;
            self.size += delta as i64;
            Some(delta)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_grants_only_what_is_left_and_takes_credit() {
        let mut w = SendWindow::new(10);
        assert_eq!(w.take(4), 4);
        assert_eq!(w.take(100), 6);
        assert_eq!(w.take(1), 0);
        w.credit(5).unwrap();
        assert_eq!(w.available(), 5);
        assert_eq!(
            w.credit(0x7fff_ffff),
            Err(FlowError::Overflow { delta: 0x7fff_ffff })
        );
        // A shrinking initial window can leave it negative: nothing to send.
        w.reinitialize(10, 0);
        assert_eq!(w.available(), 0);
        w.credit(6).unwrap();
        assert_eq!(w.available(), 1);
    }

    #[test]
    fn recv_window_refuses_overruns_and_batches_updates() {
        let mut w = RecvWindow::new(DEFAULT_WINDOW);
        w.receive(DEFAULT_WINDOW - 1).unwrap();
        assert!(w.receive(2).is_err());
        assert_eq!(w.consumed(1000), None);
        assert_eq!(
            w.consumed(DEFAULT_WINDOW / 2),
            Some(1000 + DEFAULT_WINDOW / 2)
        );
        assert_eq!(w.size(), 1 + 1000 + DEFAULT_WINDOW as i64 / 2);
        w.receive(2).unwrap();
    }
}
