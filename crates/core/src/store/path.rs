//! Path rules: canonical form, allowed characters and length limits.

use alloc::format;
use alloc::string::String;

use super::error::XsError;
use super::wire::REL_PATH_MAX;
use crate::DomId;

/// `/local/domain/<domid>`: a domain's home, the base of its relative paths.
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{}", domid.0)
}

/// Turns a path as a client sent it into an absolute one: relative paths
/// are taken relative to the connection's domain path; absolute paths and
/// special `@` names are unchanged.
pub fn canonicalize(domid: DomId, path: &str) -> String {
    if path.starts_with('/') || path.starts_with('@') {
        String::from(path)
    } else {
        format!("{}/{}", domain_path(domid), path)
    }
}

/// True for the characters C xenstored accepts in a node name.
pub fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Length of a leading `/local/domain/<N>/` (N of 1 to 5 digits), or 0.
fn local_prefix_len(path: &str) -> usize {
    const P: &str = "/local/domain/";
    let Some(rest) = path.strip_prefix(P) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=5).contains(&digits) && rest.as_bytes().get(digits) == Some(&b'/') {
        P.len() + digits + 1
    } else {
        0
    }
}

/// Checks an absolute node path: starts with `/`, no trailing `/` (except
/// the root), no `//`, only allowed characters, and at most `max_rel` bytes
/// after a leading `/local/domain/<N>/` (the rule C xenstored 4.17 applies;
/// `max_rel` is normally [`REL_PATH_MAX`]).
pub fn validate_with(path: &str, max_rel: usize) -> Result<(), XsError> {
    let ok = path.starts_with('/')
        && (path == "/" || !path.ends_with('/'))
        && !path.contains("//")
        && path.len() <= local_prefix_len(path) + max_rel
        && path.bytes().all(valid_char);
    if ok {
        Ok(())
    } else {
        Err(XsError::EINVAL)
    }
}

/// [`validate_with`] using [`REL_PATH_MAX`].
pub fn validate(path: &str) -> Result<(), XsError> {
    validate_with(path, REL_PATH_MAX)
}

/// The parent of an absolute path (`/` for top-level nodes and the root).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of an absolute path.
pub fn basename(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// Joins a parent path and a child name.
pub fn join(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// True if `child` is `parent` or below it (everything is below `/`).
pub fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return true;
    }
    match child.strip_prefix(parent) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonicalize(DomId(3), "device/vif"),
            "/local/domain/3/device/vif"
        );
        assert_eq!(canonicalize(DomId(3), "/abs"), "/abs");
        assert_eq!(canonicalize(DomId(3), "@releaseDomain"), "@releaseDomain");
    }

    #[test]
    fn validation() {
        for ok in ["/", "/a", "/a/b-c_d@e/0", "/local/domain/0/x"] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a", "/a/", "/a//b", "/a b", "/a.b", "/ä", "@x"] {
            assert_eq!(validate(bad), Err(XsError::EINVAL), "{bad}");
        }
    }

    #[test]
    fn length_rule_after_local_domain_prefix() {
        let tail = "a".repeat(REL_PATH_MAX);
        assert_eq!(validate(&format!("/local/domain/0/{tail}")), Ok(()));
        assert!(validate(&format!("/local/domain/0/{tail}a")).is_err());
        assert_eq!(
            validate(&format!("/{}", "a".repeat(REL_PATH_MAX - 1))),
            Ok(())
        );
        assert!(validate(&format!("/{}", "a".repeat(REL_PATH_MAX))).is_err());
        // Six digits are not a domain id prefix.
        assert!(validate(&format!("/local/domain/123456/{tail}")).is_err());
    }

    #[test]
    fn tree_helpers() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(!is_child("/ab", "/a"));
        assert!(is_child("/x", "/"));
        assert_eq!(domain_path(DomId(7)).to_string(), "/local/domain/7");
    }
}
