//! The `watch` globs of a build: `*` and `?` within one path segment, `**` for any number
//! of whole segments. Paths are relative with `/` separators.

/// Whether `path` matches `glob`.
pub fn matches(glob: &str, path: &str) -> bool {
    let pattern: Vec<&str> = glob.split('/').filter(|s| !s.is_empty()).collect();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_segments(&pattern, &segments)
}

fn match_segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_segments(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                match_segment(first.as_bytes(), segment.as_bytes())
                    && match_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

/// `*` and `?` against one segment, by backtracking over the last `*`.
fn match_segment(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn single_segment_wildcards() {
        assert!(matches("*.py", "app.py"));
        assert!(!matches("*.py", "lib/app.py"));
        assert!(!matches("*.py", "app.pyc"));
        assert!(matches("a?c.js", "abc.js"));
        assert!(!matches("a?c.js", "ac.js"));
        assert!(matches("*", "Makefile"));
        assert!(matches("go.*", "go.mod"));
        assert!(matches("*a*b*", "xxaxxbxx"));
        assert!(!matches("*a*b*", "xxbxxaxx"));
    }

    #[test]
    fn double_star_spans_directories() {
        assert!(matches("wit/**/*.wit", "wit/world.wit"));
        assert!(matches("wit/**/*.wit", "wit/deps/sql/sql.wit"));
        assert!(!matches("wit/**/*.wit", "src/world.wit"));
        assert!(matches("**/*.c", "main.c"));
        assert!(matches("**/*.c", "a/b/c/main.c"));
        assert!(matches("src/**", "src/a/b.rs"));
        assert!(!matches("src/**/x.rs", "src/a/y.rs"));
    }
}
