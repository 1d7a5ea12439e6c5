//! Enough of PromQL to say which metrics an expression reads: the dashboard's and the
//! alert rules' expressions, checked against the worker's metric names.

use std::collections::BTreeSet;

/// Words of PromQL that are not metric names when they stand alone (aggregations stand
/// so before `by (…)`).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
];
/// Keywords whose parenthesised list holds label names, not expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the bracket that closes the one at `open`, skipping quoted strings.
fn closing(chars: &[char], open: usize) -> usize {
    let (start, end) = (chars[open], matching(chars[open]));
    let mut depth = 0;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = past_string(chars, i) - 1,
            c if c == start => depth += 1,
            c if c == end => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unclosed {start} in {}", chars.iter().collect::<String>());
}

fn matching(open: char) -> char {
    match open {
        '(' => ')',
        '{' => '}',
        '[' => ']',
        other => panic!("{other} opens nothing"),
    }
}

fn past_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names an expression selects. Label matchers, ranges, strings, numbers,
/// functions, keywords and label lists are skipped; whatever else is a name, so a word
/// this reading does not place shows up as an unknown metric rather than as nothing.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' || c == '[' {
            i = closing(&chars, i);
        } else if c == '"' || c == '\'' || c == '`' {
            i = past_string(&chars, i);
        } else if c.is_ascii_digit() || c == '.' || c == '$' {
            // Numbers, durations (5m, 1h30m) and Grafana variables.
            i += 1;
            while i < chars.len() && (is_name_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_name_char(c) {
            let start = i;
            while i < chars.len() && is_name_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = next < chars.len() && chars[next] == '(';
            if call && LABEL_LISTS.contains(&word.as_str()) {
                i = closing(&chars, next);
            } else if call && word == "label_values" {
                // Grafana's label_values(selector, label): only the selector names a metric.
                let end = closing(&chars, next);
                let args: String = chars[next + 1..end - 1].iter().collect();
                let selector = args.rsplit_once(',').map_or(args.as_str(), |(s, _)| s);
                found.extend(metric_names(selector));
                i = end;
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                found.insert(word);
            }
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn metric_reading_finds_names_and_nothing_else() {
    let expr = r#"sum by (le, queue) (rate(cxone_a_bucket{queue="jobs", x=~"a|b"}[5m]))
        / on(instance) group_left(version) cxone_b offset 1h
        and absent(up{job="w"} == 1) or vector(0) > bool 0.5e3
        unless histogram_quantile(0.9, cxone_c{l="}"}) - time() * $job"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from(["cxone_a_bucket", "cxone_b", "up", "cxone_c"].map(String::from))
    );
    assert_eq!(
        metric_names(r#"label_values(cxone_build_info{job="$job"}, instance)"#),
        BTreeSet::from(["cxone_build_info".to_owned()])
    );
    // A misspelt name is read as a name, and so reported.
    assert!(metric_names("rate(cxone_job_total[5m])").contains("cxone_job_total"));
}
