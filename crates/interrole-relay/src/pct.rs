//! Percent-encoding shared by the token and URL code: one strict decoder, the encode sets.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

/// `E` of the protocol (RFC 3986 component encoding): everything but the unreserved characters
/// `A-Z a-z 0-9 - . _ ~` is escaped, with upper-case hex digits. This is what the .NET clients and
/// Python's `quote(s, safe='')` produce, and what the protocol's test vectors sign.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a path segment escapes: controls, space, non-ASCII, and the characters that would end or
/// split a segment or that RFC 3986 does not allow in a path (`" # % < > ? \ ^ ` { | } /`).
pub(crate) const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'/');

/// Escapes `s` with [`COMPONENT`].
pub(crate) fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Escapes one path segment with [`SEGMENT`].
pub(crate) fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Why [`decode`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A `%` not followed by two hexadecimal digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

impl DecodeError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::BadEscape => "a '%' not followed by two hexadecimal digits",
            Self::NotUtf8 => "the decoded text is not UTF-8",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` strictly: every `%` must start a two-digit escape and the result must be
/// UTF-8. `+` becomes a space only when `plus_as_space` (form encoding); otherwise it stays `+`.
pub(crate) fn decode(s: &str, plus_as_space: bool) -> Result<Cow<'_, str>, DecodeError> {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|&b| b == b'%' || (plus_as_space && b == b'+'))
    {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(DecodeError::BadEscape),
                }
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| DecodeError::NotUtf8)
}

/// The first `max` characters of `s`, for error messages that quote untrusted input.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut e: String = s.chars().take(MAX).collect();
        e.push('…');
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_encoding_matches_the_protocol() {
        assert_eq!(
            encode_component("http://contoso.servicebus.windows.net/hyco/"),
            "http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F"
        );
        assert_eq!(encode_component("a-b.c_d~e f+g"), "a-b.c_d~e%20f%2Bg");
        assert_eq!(encode_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode("a%2Fb%2fc", false).unwrap(), "a/b/c");
        assert_eq!(decode("a+b", false).unwrap(), "a+b");
        assert_eq!(decode("a+b", true).unwrap(), "a b");
        assert!(matches!(decode("plain", false).unwrap(), Cow::Borrowed(_)));
        assert_eq!(decode("%", false), Err(DecodeError::BadEscape));
        assert_eq!(decode("%4", false), Err(DecodeError::BadEscape));
        assert_eq!(decode("%zz", false), Err(DecodeError::BadEscape));
        assert_eq!(decode("%FF", false), Err(DecodeError::NotUtf8));
        assert_eq!(decode("%C3%A9", false).unwrap(), "é");
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("abc"), "abc");
        assert_eq!(excerpt(&"x".repeat(100)).chars().count(), 65);
    }
}
