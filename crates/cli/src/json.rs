//! A flat JSON object of numbers, for `--json` benchmark output (not worth a
//! serializer dependency).

use std::fmt::Write;

/// Formats `{"k": v, ...}` with finite numbers (non-finite become null).
pub fn object(fields: &[(&str, f64)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "\"{}\": ", k.replace('\\', "\\\\").replace('"', "\\\""));
        if v.is_finite() {
            let _ = write!(s, "{}", (v * 1000.0).round() / 1000.0);
        } else {
            s.push_str("null");
        }
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_numbers_and_escapes_keys() {
        assert_eq!(
            super::object(&[("a", 1.5), ("b\"", f64::NAN)]),
            r#"{"a": 1.5, "b\"": null}"#
        );
        assert_eq!(super::object(&[]), "{}");
    }
}
