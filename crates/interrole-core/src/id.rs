//! Names: instances, topics, type tags and event ids.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The longest instance id, topic or type tag accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A name that is not acceptable as an instance id, topic or type tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    what: &'static str,
    value: String,
    reason: &'static str,
}

impl InvalidName {
    /// What kind of name was refused (`"instance id"`, `"topic"`, `"type tag"`).
    pub fn what(&self) -> &'static str {
        self.what
    }
}

fn check(what: &'static str, value: &str, extra: fn(char) -> bool) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            what,
            value: value.chars().take(64).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("empty");
    }
    if value.len() > MAX_NAME_LEN {
        return fail("longer than 256 bytes");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') || extra(c))
    {
        return fail("only ASCII letters, digits and - _ . : are allowed");
    }
    Ok(())
}

/// Whether `tag` is a valid type tag: 1 to 256 bytes of ASCII letters, digits and `- _ . :`.
///
/// A `const fn`, so that a bus checks each event type's tag once, at compile time.
pub const fn tag_is_valid(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')) {
            return false;
        }
        i += 1;
    }
    true
}

/// The identity of one role instance: the sender of the events it publishes.
///
/// Cheap to clone (a shared string). Made of ASCII letters, digits and `- _ . :`, 1 to 256 bytes,
/// so that it can stand in a URL, a NATS subject or a log line unescaped.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// Checks and wraps an instance id.
    ///
    /// # Errors
    /// [`InvalidName`] when `id` is empty, too long, or has characters outside the allowed set.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidName> {
        let id = id.as_ref();
        check("instance id", id, |_| false)?;
        Ok(Self(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for InstanceId {
    type Error = InvalidName;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

/// A topic: the name every publisher and subscriber of one bus share (a relay path, a NATS
/// subject prefix).
///
/// Like an [`InstanceId`], plus `/` to separate segments; it may not start or end with `/` nor
/// hold an empty segment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// The topic a bus uses unless told otherwise.
    pub const DEFAULT: &'static str = "interrole";

    /// Checks and wraps a topic.
    ///
    /// # Errors
    /// [`InvalidName`] when `topic` is empty, too long, has characters outside the allowed set or
    /// an empty segment.
    pub fn new(topic: impl AsRef<str>) -> Result<Self, InvalidName> {
        let topic = topic.as_ref();
        check("topic", topic, |c| c == '/')?;
        if topic.split('/').any(str::is_empty) {
            return Err(InvalidName {
                what: "topic",
                value: topic.chars().take(64).collect(),
                reason: "empty segment",
            });
        }
        Ok(Self(topic.into()))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Topic {
    fn default() -> Self {
        Self(Self::DEFAULT.into())
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stable name of an event type, e.g. `"interrole.role.graceful-recycle"`.
///
/// Tags travel on the wire and route events to typed observers; unlike `TypeId` they are the same
/// in every build of every process. Tags declared in code are `'static` and cost nothing to copy;
/// tags read off the wire are shared strings.
#[derive(Clone)]
pub struct TypeTag {
    repr: TagRepr,
    fingerprint: u64,
}

#[derive(Clone)]
enum TagRepr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl TypeTag {
    /// A tag declared in code. It is not checked here: [`TypeTag::check`] is, when the event type
    /// is first registered with a bus.
    pub const fn from_static(tag: &'static str) -> Self {
        Self {
            repr: TagRepr::Static(tag),
            fingerprint: Self::fingerprint_of(tag),
        }
    }

    /// Checks and wraps a tag read at run time (off the wire, from configuration).
    ///
    /// # Errors
    /// [`InvalidName`] when `tag` is empty, too long or has characters outside the allowed set.
    pub fn new(tag: impl AsRef<str>) -> Result<Self, InvalidName> {
        let tag = tag.as_ref();
        Self::check(tag)?;
        Ok(Self {
            repr: TagRepr::Shared(tag.into()),
            fingerprint: Self::fingerprint_of(tag),
        })
    }

    /// A 64-bit hash of the tag (FNV-1a), computed once when the tag is made: what routing
    /// looks tags up by, so that a publish does not hash the text again. Equal tags have equal
    /// fingerprints; different tags almost always differ, and lookups compare the text too.
    pub const fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The [`fingerprint`](TypeTag::fingerprint) a tag with this text has.
    pub const fn fingerprint_of(tag: &str) -> u64 {
        let bytes = tag.as_bytes();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        hash
    }

    /// Checks that `tag` is acceptable as a type tag (the rules of [`InstanceId`]).
    ///
    /// # Errors
    /// [`InvalidName`] as for [`TypeTag::new`].
    pub fn check(tag: &str) -> Result<(), InvalidName> {
        check("type tag", tag, |_| false)
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        match &self.repr {
            TagRepr::Static(s) => s,
            TagRepr::Shared(s) => s,
        }
    }
}

impl PartialEq for TypeTag {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        if let (TagRepr::Static(a), TagRepr::Static(b)) = (&self.repr, &other.repr) {
            if std::ptr::eq(*a, *b) {
                return true;
            }
        }
        self.fingerprint == other.fingerprint && same_bytes(self.as_str(), other.as_str())
    }
}

/// Compares two short strings eight bytes at a time, inline: tags are compared on every publish
/// (the same tag from two places in the code need not be one address), and a call to `memcmp`
/// costs more than the comparison itself.
#[inline]
fn same_bytes(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&c[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let len = a.len();
    if len < 8 {
        return a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    }
    let mut at = 0;
    while at + 8 <= len {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    // The last, partial word: the last eight bytes, overlapping what was compared.
    at == len || word(a, len - 8) == word(b, len - 8)
}

impl Eq for TypeTag {}

impl Hash for TypeTag {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for TypeTag {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for TypeTag {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for TypeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TypeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of one event: its sender and the sender's sequence number.
///
/// Sequence numbers start at 1 and grow by one with every event a sender publishes, so a receiver
/// can drop duplicates and see gaps.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct EventId {
    /// The instance that published the event.
    pub sender: InstanceId,
    /// The sender's sequence number, strictly increasing per sender.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.sender, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_checked() {
        assert!(InstanceId::new("worker-1").is_ok());
        assert!(InstanceId::new("host.example:7").is_ok());
        assert_eq!(InstanceId::new("").unwrap_err().what(), "instance id");
        assert!(InstanceId::new("a b").is_err());
        assert!(InstanceId::new("a/b").is_err());
        assert!(InstanceId::new("x".repeat(257)).is_err());
        assert!(InstanceId::new("x".repeat(256)).is_ok());
    }

    #[test]
    fn topics_allow_segments_but_not_empty_ones() {
        assert!(Topic::new("orders/eu").is_ok());
        assert!(Topic::new("/orders").is_err());
        assert!(Topic::new("orders/").is_err());
        assert!(Topic::new("a//b").is_err());
        assert_eq!(Topic::default().as_str(), "interrole");
    }

    #[test]
    fn static_and_shared_tags_are_equal_and_hash_alike() {
        use std::collections::hash_map::DefaultHasher;
        let a = TypeTag::from_static("x.y");
        let b = TypeTag::new("x.y").unwrap();
        assert_eq!(a, b);
        let h = |t: &TypeTag| {
            let mut s = DefaultHasher::new();
            t.hash(&mut s);
            s.finish()
        };
        assert_eq!(h(&a), h(&b));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), TypeTag::fingerprint_of("x.y"));
        assert_ne!(a.fingerprint(), TypeTag::from_static("x.z").fingerprint());
        assert!(TypeTag::new("x y").is_err());
    }

    #[test]
    fn the_const_tag_check_agrees_with_the_runtime_one() {
        for tag in [
            "a",
            "a.b-c_d:e",
            "",
            "a b",
            "é",
            "a/b",
            &"x".repeat(256),
            &"x".repeat(257),
        ] {
            assert_eq!(tag_is_valid(tag), TypeTag::check(tag).is_ok(), "{tag:?}");
        }
    }
}
