//! Ctrl-C (SIGINT) and SIGTERM: the first asks the run to stop through the engine's cancel path (the same as
//! the editor's Cancel), so exports remove their temporary files; a second one removes every temporary output
//! and exits at once. `stepstone run` then exits with [`EXIT_INTERRUPTED`]; the editor cancels its run and
//! closes its window (asking first when the graph has unsaved changes).
//!
//! The handler only increments a counter (async-signal-safe); the front end's own loop (the command's
//! 100 ms poll of the worker, the editor's frame) does the rest.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The exit status of an interrupted command (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// The error a command returns when a signal stopped it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: the run was cancelled and its temporary files removed")]
pub struct Interrupted;

/// Installs the handlers (once; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            for signal in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: the action only touches an atomic counter, which is async-signal-safe; it neither
                // allocates nor locks.
                unsafe { signal_hook_registry::register(signal, count_one) }.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .clone()
        .map_err(std::io::Error::other)
}

fn count_one() {
    RECEIVED.fetch_add(1, Ordering::SeqCst);
}

/// How many interrupting signals have arrived.
pub fn received() -> usize {
    RECEIVED.load(Ordering::SeqCst)
}

/// What the polling loop does about signals: nothing yet, cancel the run (first signal), or clean up and
/// exit now (second signal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Cancel,
    Exit,
}

/// Tracks how far the polling loop has acted on the signals received.
#[derive(Debug, Default)]
pub struct Watch {
    cancelled: bool,
}

impl Watch {
    /// What to do about the signals received so far.
    pub fn poll(&mut self) -> Action {
        self.decide(received())
    }

    fn decide(&mut self, received: usize) -> Action {
        match received {
            0 => Action::None,
            1 if self.cancelled => Action::None,
            1 => {
                self.cancelled = true;
                Action::Cancel
            }
            _ => Action::Exit,
        }
    }

    /// Whether a signal asked for the cancel.
    pub fn interrupted(&self) -> bool {
        received() > 0
    }
}

/// Removes every temporary output and exits with [`EXIT_INTERRUPTED`] at once.
pub fn exit_now() -> ! {
    crate::video::output::remove_temporaries();
    eprintln!("interrupted again: temporary files removed, exiting now");
    std::process::exit(i32::from(EXIT_INTERRUPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_cancels_once_and_the_second_exits() {
        let mut watch = Watch::default();
        assert_eq!(watch.decide(0), Action::None);
        assert_eq!(watch.decide(1), Action::Cancel);
        assert_eq!(watch.decide(1), Action::None, "the cancel is asked for once");
        assert_eq!(watch.decide(2), Action::Exit);
        // Two signals before the first poll: exit at once.
        assert_eq!(Watch::default().decide(2), Action::Exit);
    }
}
