//! How a followed change is shown: a spinner per part on a terminal, a line per change of
//! state otherwise.

use std::{collections::BTreeMap, time::Duration};

/// How each part of a change is going: a spinner per part on a terminal, a line per change
/// otherwise (logs and scripts read those).
pub(crate) struct Progress {
    bars: Option<(
        indicatif::MultiProgress,
        BTreeMap<String, indicatif::ProgressBar>,
    )>,
    pub(crate) last: BTreeMap<String, String>,
}

impl Progress {
    pub(crate) fn new() -> Self {
        use std::io::IsTerminal;
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (indicatif::MultiProgress::new(), BTreeMap::new()));
        Self {
            bars,
            last: BTreeMap::new(),
        }
    }

    pub(crate) fn update(&mut self, part: &str, state: String, done: bool) {
        if self.last.get(part) == Some(&state) {
            return;
        }
        self.last.insert(part.to_owned(), state.clone());
        let Some((multi, bars)) = &mut self.bars else {
            eprintln!("{part}: {state}");
            return;
        };
        let bar = bars.entry(part.to_owned()).or_insert_with(|| {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            let style = indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg}")
                .expect("valid template");
            bar.set_style(style);
            bar.set_prefix(part.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if done {
            bar.finish_with_message(state);
        } else {
            bar.set_message(state);
        }
    }

    /// Marks every part shown before that is not in `current` as done with `state`.
    pub(crate) fn settle(&mut self, current: &[String], state: &str) {
        let gone: Vec<String> = self
            .last
            .iter()
            .filter(|(part, last)| !current.contains(part) && *last != state)
            .map(|(part, _)| part.clone())
            .collect();
        for part in gone {
            self.update(&part, state.to_owned(), true);
        }
    }

    pub(crate) fn finish(self) {
        if let Some((_, bars)) = self.bars {
            bars.values().for_each(|b| b.finish());
        }
    }
}
