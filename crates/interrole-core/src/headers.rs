//! Headers: a small ordered map of string keys to string values carried with an event.
//!
//! Headers are metadata about an event rather than part of it: a trace context, a tenant, a
//! correlation id, the reason a job was cancelled. They travel in the envelope beside the
//! payload (format version 2, `docs/protocol.md` section 10), so every transport carries them,
//! and every observer reads them without decoding the payload
//! ([`InterRoleEvent::headers`](crate::InterRoleEvent::headers)).

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most headers one event carries.
pub const MAX_HEADERS: usize = 64;
/// The longest header key, in bytes.
pub const MAX_HEADER_KEY_LEN: usize = 128;
/// The longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// The most bytes all of an event's keys and values take together.
pub const MAX_HEADERS_BYTES: usize = 16 * 1024;

/// An event's headers: string keys to string values, in the order they were first inserted.
///
/// A key is 1 to [`MAX_HEADER_KEY_LEN`] ASCII letters, digits and `- _ .`, compared as written
/// (case matters: the W3C trace context keys are lower case, `traceparent`); a value is up to
/// [`MAX_HEADER_VALUE_LEN`] bytes of UTF-8 with no control characters, so that it prints on one
/// line. An event carries at most [`MAX_HEADERS`] headers of at most [`MAX_HEADERS_BYTES`] in
/// all. Inserting a key again replaces its value in place. Small on purpose: looking a key up
/// walks the list, which for a handful of headers is faster than hashing.
///
/// ```
/// use interrole_core::Headers;
///
/// let mut headers = Headers::new().with("tenant", "acme")?.with("attempt", "1")?;
/// headers.insert("attempt", "2")?;
/// assert_eq!(headers.get("attempt"), Some("2"));
/// assert_eq!(headers.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["tenant", "attempt"]);
/// assert!(headers.insert("has space", "x").is_err());
/// # Ok::<(), interrole_core::HeaderError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    entries: Vec<(Box<str>, Box<str>)>,
    /// The bytes of every key and value.
    bytes: usize,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The key is empty, too long or has a character other than ASCII letters, digits, `- _ .`.
    #[error(
        "header key {key:?} is not valid: 1 to {MAX_HEADER_KEY_LEN} ASCII letters, digits or `- _ .`"
    )]
    InvalidKey {
        /// The key refused (cut to 200 bytes).
        key: String,
    },
    /// The value is too long or has a control character.
    #[error(
        "the value of header {key:?} is not valid: at most {MAX_HEADER_VALUE_LEN} bytes of UTF-8 with no control characters"
    )]
    InvalidValue {
        /// The header's key.
        key: String,
    },
    /// A key appears twice in headers read off the wire (a writer never repeats one).
    #[error("header key {key:?} appears twice")]
    Repeated {
        /// The key (cut to 200 bytes).
        key: String,
    },
    /// The event would carry more than [`MAX_HEADERS`] headers.
    #[error("more than {MAX_HEADERS} headers on one event")]
    TooMany,
    /// The event's keys and values would take more than [`MAX_HEADERS_BYTES`].
    #[error("headers of {bytes} bytes on one event, more than the {MAX_HEADERS_BYTES} allowed")]
    TooLarge {
        /// The bytes they would take.
        bytes: usize,
    },
}

/// Whether `key` is a valid header key.
pub fn header_key_is_valid(key: &str) -> bool {
    (1..=MAX_HEADER_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `value` is a valid header value.
pub fn header_value_is_valid(value: &str) -> bool {
    value.len() <= MAX_HEADER_VALUE_LEN && !value.chars().any(char::is_control)
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl Headers {
    /// No headers. Does not allocate.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
        }
    }

    /// Sets `key` to `value`: in place when the key is there, at the end otherwise.
    ///
    /// # Errors
    /// [`HeaderError`] when the key or the value is not valid, or the headers would be too many
    /// or too large; the headers are unchanged then.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), HeaderError> {
        if !header_key_is_valid(key) {
            return Err(HeaderError::InvalidKey { key: cut(key) });
        }
        if !header_value_is_valid(value) {
            return Err(HeaderError::InvalidValue { key: key.into() });
        }
        let at = self.entries.iter().position(|(k, _)| &**k == key);
        let bytes = match at {
            Some(i) => self.bytes - self.entries[i].1.len() + value.len(),
            None => self.bytes + key.len() + value.len(),
        };
        if bytes > MAX_HEADERS_BYTES {
            return Err(HeaderError::TooLarge { bytes });
        }
        match at {
            Some(i) => self.entries[i].1 = value.into(),
            None if self.entries.len() == MAX_HEADERS => return Err(HeaderError::TooMany),
            None => self.entries.push((key.into(), value.into())),
        }
        self.bytes = bytes;
        Ok(())
    }

    /// These headers with `key` set to `value`: [`Headers::insert`] for building in one
    /// expression.
    ///
    /// # Errors
    /// As [`Headers::insert`].
    pub fn with(mut self, key: &str, value: &str) -> Result<Self, HeaderError> {
        self.insert(key, value)?;
        Ok(self)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.entries.iter().position(|(k, _)| &**k == key)?;
        let (k, v) = self.entries.remove(at);
        self.bytes -= k.len() + v.len();
        Some(v.into())
    }

    /// The keys and values, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes all keys and values take (what [`MAX_HEADERS_BYTES`] limits).
    pub fn byte_len(&self) -> usize {
        self.bytes
    }

    /// Adds a header read off the wire: as [`Headers::insert`], but a key already there is
    /// refused rather than replaced (a writer never repeats one, so a reader does not pick).
    fn push_read(&mut self, key: &str, value: &str) -> Result<(), HeaderError> {
        if self.contains_key(key) {
            return Err(HeaderError::Repeated { key: cut(key) });
        }
        self.insert(key, value)
    }

    /// Builds headers from pairs read off the wire, checking every limit.
    pub(crate) fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, HeaderError> {
        let mut headers = Self::new();
        for (k, v) in pairs {
            headers.push_read(k, v)?;
        }
        Ok(headers)
    }
}

/// Headers are a map in serde: bincode writes the count, then each key and its value (the
/// envelope's layout), JSON an object in order.
impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Reads a map, checking every limit as [`Headers::insert`] does; a repeated key is an error.
impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header keys to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Headers::new();
                while let Some((k, v)) =
                    map.next_entry::<std::borrow::Cow<'de, str>, std::borrow::Cow<'de, str>>()?
                {
                    headers.push_read(&k, &v).map_err(de::Error::custom)?;
                }
                Ok(headers)
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn ExactSizeIterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_keeps_order_and_replaces_in_place() {
        let mut h = Headers::new();
        h.insert("b", "1").unwrap();
        h.insert("a", "2").unwrap();
        h.insert("b", "33").unwrap();
        assert_eq!(h.iter().collect::<Vec<_>>(), [("b", "33"), ("a", "2")]);
        assert_eq!(h.byte_len(), 1 + 2 + 1 + 1);
        assert_eq!(h.remove("b").as_deref(), Some("33"));
        assert_eq!(h.byte_len(), 2);
        assert_eq!(h.get("b"), None);
        assert_eq!(format!("{h:?}"), r#"{"a": "2"}"#);
    }

    #[test]
    fn bad_keys_and_values_are_refused_and_change_nothing() {
        let mut h = Headers::new().with("k", "v").unwrap();
        for key in [
            "",
            "has space",
            "colon:",
            "é",
            &"k".repeat(MAX_HEADER_KEY_LEN + 1),
        ] {
            assert!(
                matches!(h.insert(key, "v"), Err(HeaderError::InvalidKey { .. })),
                "{key:?}"
            );
        }
        for value in [
            "line\nbreak",
            "nul\0",
            &"v".repeat(MAX_HEADER_VALUE_LEN + 1),
        ] {
            assert!(matches!(
                h.insert("k", value),
                Err(HeaderError::InvalidValue { .. })
            ));
        }
        assert!(h.insert("k", &"v".repeat(MAX_HEADER_VALUE_LEN)).is_ok());
        assert!(h.insert("Key-1_x.y", "ünïcode ✓").is_ok());
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn count_and_size_limits() {
        let mut h = Headers::new();
        for i in 0..MAX_HEADERS {
            h.insert(&format!("k{i}"), "").unwrap();
        }
        assert_eq!(h.insert("one-more", ""), Err(HeaderError::TooMany));
        // Replacing an existing key is not one more.
        h.insert("k0", "x").unwrap();

        let mut h = Headers::new();
        let big = "v".repeat(MAX_HEADER_VALUE_LEN);
        for i in 0..3 {
            h.insert(&format!("k{i}"), &big).unwrap();
        }
        let before = h.clone();
        assert!(matches!(
            h.insert("k3", &big),
            Err(HeaderError::TooLarge { bytes }) if bytes > MAX_HEADERS_BYTES
        ));
        assert_eq!(h, before);
    }

    #[test]
    fn repeated_keys_off_the_wire_are_refused() {
        assert!(matches!(
            Headers::from_pairs([("a", "1"), ("a", "2")]),
            Err(HeaderError::Repeated { .. })
        ));
        assert_eq!(
            Headers::from_pairs([("a", "1"), ("b", "2")]).unwrap().len(),
            2
        );
    }
}
