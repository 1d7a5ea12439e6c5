//! Enough of PromQL to say which metrics and labels an expression reads: the
//! dashboard's and the alert rules' expressions, checked against what the worker exports.

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

/// A label an expression names, in a matcher or a `by (…)`-like list, with the values a
/// matcher compares it to (`=`, `!=`, and the alternatives of a plain `=~`/`!~`).
#[derive(Debug, PartialEq)]
pub(crate) struct LabelUse {
    pub(crate) label: String,
    pub(crate) values: Vec<String>,
}

/// What an expression reads.
#[derive(Debug, Default)]
pub(crate) struct Reading {
    pub(crate) metrics: BTreeSet<String>,
    pub(crate) labels: Vec<LabelUse>,
}

/// The metric names an expression selects.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    reading(expr).metrics
}

/// Reads an expression. Strings, numbers, ranges, functions and keywords are skipped;
/// whatever else is a name, so a word this reading does not place shows up as an
/// unknown metric rather than as nothing.
pub(crate) fn reading(expr: &str) -> Reading {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Reading::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            let end = closing(&chars, i);
            found.labels.extend(matchers(&chars[i + 1..end - 1]));
            i = end;
        } else if c == '[' {
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
            i = word(&chars, i, &mut found);
        } else {
            i += 1;
        }
    }
    found
}

/// Reads the word at `start` (a metric, function, keyword or label list); returns the
/// index past what it took.
fn word(chars: &[char], start: usize, found: &mut Reading) -> usize {
    let mut i = start;
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
        let end = closing(chars, next);
        let list: String = chars[next + 1..end - 1].iter().collect();
        found.labels.extend(
            list.split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| LabelUse {
                    label: l.to_owned(),
                    values: Vec::new(),
                }),
        );
        return end;
    }
    if call && word == "label_values" {
        // Grafana's label_values(selector, label): only the selector names a metric.
        let end = closing(chars, next);
        let args: String = chars[next + 1..end - 1].iter().collect();
        let selector = args.rsplit_once(',').map_or(args.as_str(), |(s, _)| s);
        let inner = reading(selector);
        found.metrics.extend(inner.metrics);
        found.labels.extend(inner.labels);
        return end;
    }
    if !call && !KEYWORDS.contains(&word.as_str()) {
        found.metrics.insert(word);
    }
    i
}

/// The matchers between a selector's braces: `name op "value"`, comma separated.
fn matchers(inside: &[char]) -> Vec<LabelUse> {
    let mut out = Vec::new();
    let mut i = 0;
    let skip = |i: &mut usize, what: fn(char) -> bool| {
        while *i < inside.len() && what(inside[*i]) {
            *i += 1;
        }
    };
    loop {
        skip(&mut i, |c| c.is_whitespace() || c == ',');
        if i >= inside.len() {
            return out;
        }
        let start = i;
        skip(&mut i, is_name_char);
        let label: String = inside[start..i].iter().collect();
        skip(&mut i, char::is_whitespace);
        let op_start = i;
        skip(&mut i, |c| matches!(c, '=' | '!' | '~'));
        let op: String = inside[op_start..i].iter().collect();
        skip(&mut i, char::is_whitespace);
        assert!(
            !label.is_empty() && i < inside.len() && matches!(inside[i], '"' | '\'' | '`'),
            "a matcher this reading does not know: {}",
            inside.iter().collect::<String>()
        );
        let end = past_string(inside, i);
        let value: String = inside[i + 1..end - 1].iter().collect();
        i = end;
        let plain = |v: &str| v.chars().all(|c| is_name_char(c) || c == '|');
        let values = match op.as_str() {
            _ if value.contains('$') => Vec::new(),
            "=" | "!=" => vec![value],
            "=~" | "!~" if plain(&value) => value.split('|').map(String::from).collect(),
            _ => Vec::new(),
        };
        out.push(LabelUse { label, values });
    }
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

#[test]
fn label_reading_finds_matchers_and_lists() {
    let expr = r#"max by (queue, instance) (cxone_a{queue=~"results|audit", job="$job", answer != "5xx", x=~"a.*"})
        / on (instance) cxone_b{result="ok"}"#;
    let uses = |label: &str, values: &[&str]| LabelUse {
        label: label.to_owned(),
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    assert_eq!(
        reading(expr).labels,
        [
            uses("queue", &[]),
            uses("instance", &[]),
            uses("queue", &["results", "audit"]),
            uses("job", &[]),
            uses("answer", &["5xx"]),
            uses("x", &[]),
            uses("instance", &[]),
            uses("result", &["ok"]),
        ]
    );
}
