//! Progress of a long benchmark on a terminal: one status line on stderr,
//! rewritten in place per phase and cleared at the end. Nothing at all when
//! stderr is not a terminal (piped, redirected, CI), so the results on
//! stdout, and logs, stay clean.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// The status line of one benchmark run.
pub struct Progress {
    name: &'static str,
    total: usize,
    done: usize,
    started: Instant,
    on: bool,
}

impl Progress {
    /// A progress line for benchmark `name` with `total` phases; shown only
    /// if stderr is a terminal.
    pub fn new(name: &'static str, total: usize) -> Self {
        Self::with(name, total, std::io::stderr().is_terminal())
    }

    fn with(name: &'static str, total: usize, on: bool) -> Self {
        Self {
            name,
            total,
            done: 0,
            started: Instant::now(),
            on,
        }
    }

    /// Starts the next phase, called `what`.
    pub fn phase(&mut self, what: &str) {
        self.done += 1;
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "\r\x1b[2K{} [{}/{}] {what} ({:.0} s)",
                self.name,
                self.done.min(self.total),
                self.total,
                self.started.elapsed().as_secs_f64()
            );
            let _ = e.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.on {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piped_progress_counts_phases_but_prints_nothing() {
        let mut p = Progress::with("bench", 2, false);
        p.phase("one");
        p.phase("two");
        p.phase("three");
        assert_eq!((p.done, p.total, p.on), (3, 2, false));
    }
}
