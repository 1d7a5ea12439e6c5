//! `--glob` patterns on file names, as a shell or `find -name` reads them: `*`, `?`,
//! `[abc]`, `[a-z]` and `[!x]`.

/// Whether `name` (a file name, not a path) matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative match with one backtrack point for the last `*`: linear in practice,
    // never exponential.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => {
                pi += 1;
                ni += 1;
                continue;
            }
            Some('[') => {
                if let Some((hit, len)) = class(&p[pi..], n[ni]) {
                    if hit {
                        pi += len;
                        ni += 1;
                        continue;
                    }
                } else if n[ni] == '[' {
                    // An unclosed `[` is a literal.
                    pi += 1;
                    ni += 1;
                    continue;
                }
            }
            Some(c) if *c == n[ni] => {
                pi += 1;
                ni += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A bracket class at the start of `p`: whether `c` is in it, and the class's length;
/// `None` when the bracket is not closed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|hi| *hi != ']') {
            let hi = p[i + 2];
            hit |= lo <= c && c <= hi;
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn shell_patterns() {
        assert!(matches("*.pdf", "invoice.pdf"));
        assert!(matches("*.pdf", ".pdf"));
        assert!(!matches("*.pdf", "invoice.pdf.bak"));
        assert!(matches("inv-??.png", "inv-07.png"));
        assert!(!matches("inv-??.png", "inv-7.png"));
        assert!(matches("*[0-9].jpg", "scan3.jpg"));
        assert!(!matches("*[!0-9].jpg", "scan3.jpg"));
        assert!(matches("[]]x", "]x"));
        assert!(matches("a[b", "a[b"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("*.PDF", "X.PDF") && !matches("*.PDF", "x.pdf"));
    }
}
