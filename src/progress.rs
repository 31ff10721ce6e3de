//! Progress of the companion binary's long passes over photos: indicatif's bar on a
//! terminal, and in a log (CI, `nohup`), where indicatif draws nothing, a line at every
//! tenth of the way once it has run for a few seconds, so that an hour of embedding never looks
//! like a hang.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{HumanDuration, ProgressBar, ProgressStyle};

/// How long a pass runs before a log hears of it.
const QUIET_START: Duration = Duration::from_secs(5);

pub struct PhotoProgress {
    bar: ProgressBar,
    label: String,
    /// The tenths of the way already logged; unused on a terminal.
    logged: AtomicU64,
}

impl PhotoProgress {
    /// Progress over `total` photos, named `label` (what is computed, e.g. "colour").
    pub fn new(total: usize, label: impl Into<String>) -> PhotoProgress {
        let label = label.into();
        let bar = ProgressBar::new(total as u64).with_style(
            ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} photos, {per_sec}, {eta} left")
                .expect("the template is valid"),
        );
        bar.set_prefix(label.clone());
        PhotoProgress {
            bar,
            label,
            logged: AtomicU64::new(0),
        }
    }

    /// One more photo done (from any thread).
    pub fn inc(&self) {
        self.bar.inc(1);
        // indicatif hides the bar exactly when stderr is not a terminal.
        if !self.bar.is_hidden() {
            return;
        }
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let tenths = tenths_done(done, total);
        let logged = self.logged.load(Ordering::Relaxed);
        // A pass that is over within seconds (photos from the cache) needs no lines. Of the
        // threads that pass a tenth, the one that records it writes the line.
        if tenths > logged
            && self.bar.elapsed() >= QUIET_START
            && self
                .logged
                .compare_exchange(logged, tenths, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            eprintln!(
                "{}: {done}/{total} photos ({}%), {:.1} photos/s, {} left",
                self.label,
                done * 100 / total.max(1),
                self.bar.per_sec(),
                HumanDuration(self.bar.eta())
            );
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Whole tenths of `total` that `done` has reached (0 to 10).
fn tenths_done(done: u64, total: u64) -> u64 {
    (done * 10).checked_div(total).unwrap_or(10).min(10)
}

#[cfg(test)]
mod tests {
    use super::tenths_done;

    #[test]
    fn a_line_is_due_at_each_tenth_and_not_between() {
        let due: Vec<u64> = (1..=41_802).map(|done| tenths_done(done, 41_802)).collect();
        let changes = due.windows(2).filter(|pair| pair[0] != pair[1]).count();
        assert_eq!((due[0], *due.last().unwrap(), changes), (0, 10, 10));
        assert_eq!(tenths_done(0, 0), 10, "nothing to do is all done");
        assert_eq!(tenths_done(3, 7), 4);
    }
}
