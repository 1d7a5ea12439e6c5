//! Aligned text tables for terminals, and the short durations they show.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Columns padded to their widest cell; numbers align right. The last column is not
/// padded, so long text there (an error message) does not push lines wider.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([self.columns[i].0.len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (_, align)) in self.columns.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = widths[i].saturating_sub(cell.chars().count());
                let last = i + 1 == self.columns.len();
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if !last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `850ms`, `45s`, `3m12s`, `2h05m`, `3d04h`: two units at most.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Text cut to `max` characters, with an ellipsis when cut; line breaks become spaces.
pub fn clip(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Text cut to `max` characters in its middle, for paths: the head says where (the
/// scheme, the root), the tail names the file, and `…` stands for what was cut.
pub fn clip_middle(text: &str, max: usize) -> String {
    let flat = clip(text, usize::MAX);
    let n = flat.chars().count();
    if n <= max || max < 3 {
        return clip(&flat, max);
    }
    let head = (max - 1) / 3;
    let tail = max - 1 - head;
    let mut cut: String = flat.chars().take(head).collect();
    cut.push('…');
    cut.extend(flat.chars().skip(n - tail));
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("READY", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a.jobs".into(), "7".into(), "x".into()]);
        t.row(vec!["b".into(), "1200".into(), "long note".into()]);
        assert_eq!(
            t.render(),
            "NAME    READY  NOTE\n\
             a.jobs      7  x\n\
             b        1200  long note\n"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
        assert_eq!(short_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(short_duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(
            short_duration(Duration::from_secs(3 * 86_400 + 4 * 3600 + 5)),
            "3d04h"
        );
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("héllo\nworld", 20), "héllo world");
        assert_eq!(clip("ééééé", 3), "éé…");
    }

    #[test]
    fn clip_middle_keeps_both_ends() {
        let path = "file:///data/backfill/2026-01/invoices/inv-000123.pdf";
        let cut = clip_middle(path, 30);
        assert_eq!(cut.chars().count(), 30);
        assert_eq!(cut, "file:///d…oices/inv-000123.pdf");
        assert_eq!(clip_middle("short.pdf", 30), "short.pdf");
        assert_eq!(
            clip_middle("a\u{1b}[2Jb", 30),
            "a [2Jb",
            "no escape reaches the terminal"
        );
        assert_eq!(clip_middle("abcdef", 2), "a…");
    }
}
