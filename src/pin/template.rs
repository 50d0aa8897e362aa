//! Whether a resource URI falls under a URI template (RFC 6570), for
//! refusing `resources/read` of a template that is not approved. Every
//! expression (`{n}`, `{+path}`, `{?q,lang}`, `{/seg*}` …) is taken to stand
//! for any text, empty included, and the literal text between expressions
//! must appear in order: a URI an expansion of the template could produce
//! always matches (an expansion's literals are the template's), and some
//! others may too. That errs towards refusing, which is the side pinning
//! must err on.

/// Whether `uri` could be an expansion of `template`.
pub(crate) fn matches(template: &str, uri: &str) -> bool {
    let (first, mut rest) = split_expression(template);
    let Some(mut left) = uri.strip_prefix(first) else {
        return false;
    };
    while let Some(after) = rest {
        let (literal, next) = split_expression(after);
        if next.is_none() {
            // The last literal ends the URI.
            return left.ends_with(literal);
        }
        // A middle literal at its first place after the one before: the
        // leftmost place leaves the most room for those after it.
        match left.find(literal) {
            Some(at) => left = &left[at + literal.len()..],
            None => return false,
        }
        rest = next;
    }
    // No expression at all: the template is one literal URI.
    left.is_empty()
}

/// The literal text of `template` before its first expression, and what
/// follows that expression (`None`: there is none). An unclosed `{` is
/// taken as literal text.
fn split_expression(template: &str) -> (&str, Option<&str>) {
    let open = template.find('{');
    match open.and_then(|o| template[o..].find('}').map(|c| (o, o + c))) {
        Some((open, close)) => (&template[..open], Some(&template[close + 1..])),
        None => (template, None),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn expansions_of_a_template_match_it() {
        let t = "e2e://docs/{n}";
        assert!(matches(t, "e2e://docs/7"));
        assert!(
            matches(t, "e2e://docs/"),
            "an expression may expand to nothing"
        );
        assert!(
            matches(t, "e2e://docs/a/b"),
            "{{n}} is taken to stand for any text"
        );
        assert!(!matches(t, "e2e://doc/7"));
        assert!(!matches(t, "e2e://greeting"));
        let t = "github://repos/{owner}/{repo}/issues{?state,labels}";
        assert!(matches(t, "github://repos/acme/web/issues"));
        assert!(matches(t, "github://repos/acme/web/issues?state=open"));
        assert!(!matches(t, "github://repos/acme/issues/web"));
        assert!(!matches(t, "github://repos/acme/web/pulls"));
        assert!(matches("file:///{+path}", "file:///etc/hosts"));
        assert!(matches("{+uri}", "anything://at/all"));
        assert!(matches("x://{a}{b}/end", "x:///end"));
        assert!(!matches("x://{a}/mid/{b}/end", "x://1/end"));
        assert!(matches("x://{a}/mid/{b}/end", "x://1/mid/2/end"));
        // The literal before the end may not overlap the end itself.
        assert!(!matches("x://{a}ab{b}ab", "x://ab"));
        assert!(matches("x://{a}ab{b}ab", "x://abab"));
    }

    #[test]
    fn a_template_without_expressions_is_one_uri() {
        assert!(matches("e2e://greeting", "e2e://greeting"));
        assert!(!matches("e2e://greeting", "e2e://greeting/2"));
        assert!(!matches("e2e://greeting", "e2e://greet"));
        assert!(matches("", ""));
        assert!(!matches("", "x"));
        // An unclosed brace is literal text.
        assert!(matches("x://{oops", "x://{oops"));
        assert!(!matches("x://{oops", "x://1"));
    }
}
