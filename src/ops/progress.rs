//! Progress of a long command on stderr: an indicatif bar (count, rate, ETA) when
//! stderr is a terminal, a plain line every few seconds otherwise (logs, CI, pipes).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::time::Instant;

use super::table::short_duration;

/// How often a plain line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    out: Output,
}

enum Output {
    Bar(ProgressBar),
    Lines { last: Instant },
}

impl Progress {
    /// `label` names the command in plain lines (`enqueue: 1200/5000 …`).
    pub fn new(label: &'static str, total: u64) -> Self {
        let now = Instant::now();
        let out = if std::io::stderr().is_terminal() {
            let style = ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:32}] {pos}/{len} ({percent}%) {rate} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            // Whole messages per second; indicatif's own `{per_sec}` shows four decimals.
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(style);
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            Output::Bar(bar)
        } else {
            Output::Lines { last: now }
        };
        Self {
            label,
            total,
            done: 0,
            started: now,
            out,
        }
    }

    pub fn inc(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.done += n;
        match &mut self.out {
            Output::Bar(bar) => bar.inc(n),
            Output::Lines { last } => {
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    /// Prints a message above the bar (or as a line), without garbling it.
    pub fn println(&self, message: &str) {
        match &self.out {
            Output::Bar(bar) => bar.suspend(|| eprintln!("{message}")),
            Output::Lines { .. } => eprintln!("{message}"),
        }
    }

    /// Removes the bar; plain output prints a last line if it printed any before.
    pub fn finish(&mut self) {
        match &self.out {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Lines { .. } => {
                if self.started.elapsed() >= PLAIN_EVERY {
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            self.done as f64 / elapsed
        } else {
            0.0
        };
        let percent = (self.done * 100).checked_div(self.total).unwrap_or(100);
        let eta = if rate > 0.0 {
            short_duration(Duration::from_secs_f64(
                self.total.saturating_sub(self.done) as f64 / rate,
            ))
        } else {
            "?".to_owned()
        };
        format!(
            "{}: {}/{} ({percent}%), {rate:.0}/s, ETA {eta}",
            self.label, self.done, self.total
        )
    }
}
