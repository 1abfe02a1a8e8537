//! The training loop's progress bar on stderr: one bar per epoch of a stage, with the running
//! loss (hidden when stderr is not a terminal).

use crate::trainer::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::RefCell;

/// A progress bar fed by a stage's progress callback (`&|p| bars.update(p)`).
#[derive(Default)]
pub struct Bars(RefCell<Option<(ProgressBar, usize)>>);

impl Bars {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&self, p: &Progress) {
        let mut cur = self.0.borrow_mut();
        let fresh = !matches!(&*cur, Some((_, e)) if *e == p.epoch);
        if fresh {
            if let Some((b, _)) = cur.take() {
                b.finish_and_clear();
            }
            let b = ProgressBar::new(p.steps as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            *cur = Some((b, p.epoch));
        }
        if let Some((b, _)) = &*cur {
            b.set_position(p.step as u64);
            b.set_message(format!(
                "{} {}/{} loss {:.4}",
                p.stage,
                p.epoch + 1,
                p.epochs,
                p.loss
            ));
        }
    }

    /// Clears the bar of the stage that just ended.
    pub fn finish(&self) {
        if let Some((b, _)) = self.0.borrow_mut().take() {
            b.finish_and_clear();
        }
    }
}
