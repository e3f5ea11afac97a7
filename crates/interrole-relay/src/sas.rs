//! Shared access signatures: the bearer tokens that authorize every relay handshake.
//!
//! A token names a resource (`sr`), an expiry (`se`, Unix seconds) and a key (`skn`), and proves
//! knowledge of that key with an HMAC-SHA256 signature (`sig`):
//!
//! ```text
//! SharedAccessSignature sr={E(resource)}&sig={E(base64(HMAC-SHA256(key, E(resource) + "\n" + se)))}&se={se}&skn={key name}
//! ```
//!
//! `E` is URL component encoding (everything but `A-Z a-z 0-9 - . _ ~` escaped, upper-case hex).
//! The HMAC key is the UTF-8 bytes of the key string, not its base64 decoding.
//!
//! ```
//! use interrole_relay::sas::{Access, KeySet, Right, Rights, SasKey, SharedAccessSignature};
//!
//! let keys = KeySet::new().with(SasKey::new("RootManageSharedAccessKey", "secretkey", Rights::MANAGE));
//! let token = SharedAccessSignature::sign(
//!     "RootManageSharedAccessKey", "secretkey", "http://relay.example/hyco", 1_700_000_000);
//! let header = token.to_string(); // what a client sends in `ServiceBusAuthorization`
//!
//! let received = SharedAccessSignature::parse(&header)?;
//! let key = keys.verify(&received, &Access::new("hyco", Right::Listen, 1_699_999_000))?;
//! assert_eq!(key.name(), "RootManageSharedAccessKey");
//! # Ok::<(), interrole_relay::sas::SasError>(())
//! ```
//!
//! ## Tolerance
//!
//! Clients build tokens differently, so [`SharedAccessSignature::parse`] and [`KeySet::verify`]
//! are liberal where that costs no security:
//!
//! - fields in any order, field names in any case, unknown fields ignored;
//! - the header form (`SharedAccessSignature sr=..`), the same text still percent-encoded as it
//!   stands in an `sb-hc-token` query parameter (`SharedAccessSignature%20sr%3D..`, or with `+`
//!   for the space), and the bare field list (`sr=..&sig=..`);
//! - `sig` is percent-decoded without turning `+` into a space (Python's `quote()` leaves `/`
//!   unescaped, some clients leave `+` unescaped), and its base64 may omit padding;
//! - the HMAC is computed over the raw `sr` text exactly as received (upper- or lower-case
//!   escapes, trailing slash, port: whatever the client signed);
//! - the audience check ignores the scheme, the port and a trailing slash, compares the host
//!   case-insensitively, and accepts an `sr` whose path is a segment prefix of the entity path
//!   (`http://host/` authorizes every path of the namespace). Path segments compare
//!   case-sensitively.
//!
//! ## Checks, in order
//!
//! [`KeySet::verify`] checks the key name ([`SasErrorKind::UnknownKey`]), the signature in constant
//! time ([`SasErrorKind::BadSignature`]), the expiry ([`SasErrorKind::Expired`]: a token is valid
//! while `now < se`), the audience ([`SasErrorKind::WrongAudience`]), then the key's rights and path
//! scope ([`SasErrorKind::InsufficientRights`]). Nothing in the token is trusted before its
//! signature is: the expiry and audience are checked only after it. Each error kind maps to the
//! HTTP status a relay answers ([`SasErrorKind::http_status`]): 401 for a token that is missing or
//! invalid, 403 for a valid token that does not allow this path or action.

use std::fmt;
use std::ops::BitOr;
use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pct;

/// The scheme word that starts a token.
pub const TOKEN_PREFIX: &str = "SharedAccessSignature";

/// The longest token [`SharedAccessSignature::parse`] accepts, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

/// Standard base64 that accepts input with or without padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// URL-safe base64, with or without padding (`-` and `_` instead of `+` and `/`).
const LENIENT_BASE64_URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// Rights

/// One right a key can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Open a listener control channel (`listen`) or a multicast subscription (`subscribe`).
    Listen,
    /// Connect as a sender (`connect`, HTTP requests) or publish to a multicast path (`publish`).
    Send,
    /// Manage the namespace; implies [`Right::Listen`] and [`Right::Send`].
    Manage,
}

impl Right {
    /// The right's name as Azure spells it (`"Listen"`, `"Send"`, `"Manage"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listen => "Listen",
            Self::Send => "Send",
            Self::Manage => "Manage",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Listen => 1,
            Self::Send => 2,
            Self::Manage => 4,
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Right {
    type Err = SasError;

    /// Parses `Listen`, `Send` or `Manage`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Listen, Self::Send, Self::Manage]
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                SasError::new(
                    SasErrorKind::Malformed,
                    format!("unknown right {:?}", pct::excerpt(s)),
                )
            })
    }
}

/// The set of rights a key grants. [`Rights::MANAGE`] implies the other two.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    /// No right at all.
    pub const NONE: Self = Self(0);
    /// [`Right::Listen`] only.
    pub const LISTEN: Self = Self(1);
    /// [`Right::Send`] only.
    pub const SEND: Self = Self(2);
    /// [`Right::Manage`], which implies listen and send.
    pub const MANAGE: Self = Self(4);

    /// Whether this set allows `right` (Manage allows everything).
    pub fn allows(self, right: Right) -> bool {
        self.0 & (right.bit() | Right::Manage.bit()) != 0
    }

    /// The rights in the set, as granted (Manage is not expanded).
    pub fn iter(self) -> impl Iterator<Item = Right> {
        [Right::Listen, Right::Send, Right::Manage]
            .into_iter()
            .filter(move |r| self.0 & r.bit() != 0)
    }
}

impl From<Right> for Rights {
    fn from(right: Right) -> Self {
        Self(right.bit())
    }
}

impl BitOr for Rights {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOr<Right> for Rights {
    type Output = Self;
    fn bitor(self, rhs: Right) -> Self {
        Self(self.0 | rhs.bit())
    }
}

impl FromIterator<Right> for Rights {
    fn from_iter<I: IntoIterator<Item = Right>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, |acc, r| acc | r)
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rights(")?;
        for (i, r) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            f.write_str(r.as_str())?;
        }
        f.write_str(")")
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SasErrorKind {
    /// No token was presented at all (401).
    Missing,
    /// The token is not a shared access signature: missing or duplicated fields, bad escapes,
    /// bad base64, a non-numeric expiry, too long (401).
    Malformed,
    /// The token names a key the relay does not have (401).
    UnknownKey,
    /// The signature does not match the key (401).
    BadSignature,
    /// The token's expiry has passed (401).
    Expired,
    /// The token was issued for another host or path (403).
    WrongAudience,
    /// The key does not grant the right this action needs, or is limited to other paths (403).
    InsufficientRights,
}

impl SasErrorKind {
    /// The HTTP status a relay answers the handshake with: 401 when the token is missing or
    /// invalid, 403 when a valid token does not allow this path or action.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Missing
            | Self::Malformed
            | Self::UnknownKey
            | Self::BadSignature
            | Self::Expired => 401,
            Self::WrongAudience | Self::InsufficientRights => 403,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing token",
            Self::Malformed => "malformed token",
            Self::UnknownKey => "unknown key",
            Self::BadSignature => "bad signature",
            Self::Expired => "token expired",
            Self::WrongAudience => "wrong audience",
            Self::InsufficientRights => "insufficient rights",
        }
    }
}

impl fmt::Display for SasErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token: its [kind](SasError::kind) and a message saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct SasError {
    kind: SasErrorKind,
    message: String,
}

impl SasError {
    fn new(kind: SasErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The error for a handshake that presented no token ([`SasErrorKind::Missing`]).
    pub fn missing() -> Self {
        Self::new(
            SasErrorKind::Missing,
            "no sb-hc-token parameter nor ServiceBusAuthorization header",
        )
    }

    /// Why the token was refused.
    pub fn kind(&self) -> SasErrorKind {
        self.kind
    }

    /// The HTTP status to answer with (see [`SasErrorKind::http_status`]).
    pub fn http_status(&self) -> u16 {
        self.kind.http_status()
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn malformed(message: impl Into<String>) -> SasError {
    SasError::new(SasErrorKind::Malformed, message)
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// A parsed shared access signature.
///
/// `Display` writes the token in its header form (`SharedAccessSignature sr=..&sig=..&se=..&skn=..`),
/// which is a bearer credential: do not log it. `Debug` leaves the signature out.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedAccessSignature {
    /// `sr` exactly as received: still percent-encoded, the text the signature covers.
    resource: String,
    signature: Vec<u8>,
    expiry: u64,
    key_name: String,
}

fn hmac(key: &[u8], resource: &str, expiry: u64) -> HmacSha256 {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(resource.as_bytes());
    mac.update(b"\n");
    mac.update(expiry.to_string().as_bytes());
    mac
}

/// Reads a duration as the command lines write one (a token's validity, a timeout): a whole
/// number and a unit, `ms`, `s`, `m`, `h` or `d`; a bare number is seconds.
///
/// # Errors
/// A message naming the text and the units, for anything else.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (num, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {text:?} (e.g. 500ms, 2s, 1m)"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad unit {unit:?} in {text:?} (ms, s, m, h, d)")),
    };
    Ok(std::time::Duration::from_millis(n.saturating_mul(ms)))
}

impl SharedAccessSignature {
    /// Signs a token for `resource` valid for `ttl` from now (by the system clock): what the
    /// `token` commands of the relay's and the interrole command lines print.
    pub fn sign_for(key_name: &str, key: &str, resource: &str, ttl: std::time::Duration) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::sign(key_name, key, resource, now.saturating_add(ttl.as_secs()))
    }

    /// Signs a token for `resource` (a URL, not yet encoded: `http://host/path`) valid until
    /// `expiry` (Unix seconds), with the key `key_name` whose secret is `key`.
    pub fn sign(key_name: &str, key: &str, resource: &str, expiry: u64) -> Self {
        Self::sign_encoded(key_name, key, pct::encode_component(resource), expiry)
    }

    /// Signs a token whose `sr` is `encoded_resource` exactly as given (already percent-encoded
    /// by the caller), for clients that must reproduce another client's encoding.
    pub fn sign_encoded(
        key_name: &str,
        key: &str,
        encoded_resource: impl Into<String>,
        expiry: u64,
    ) -> Self {
        let resource = encoded_resource.into();
        let signature = hmac(key.as_bytes(), &resource, expiry)
            .finalize()
            .into_bytes()
            .to_vec();
        Self {
            resource,
            signature,
            expiry,
            key_name: key_name.to_owned(),
        }
    }

    /// Parses a token in any of the forms described in the [module docs](self#tolerance).
    ///
    /// # Errors
    /// [`SasErrorKind::Missing`] for empty text; [`SasErrorKind::Malformed`] when the text is
    /// longer than [`MAX_TOKEN_LEN`], a field lacks `=`, one of `sr`, `sig`, `se`, `skn` is
    /// missing, empty or given twice, an escape is bad, `sig` is not base64 or `se` is not a
    /// decimal `u64`.
    pub fn parse(text: &str) -> Result<Self, SasError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(malformed(format!(
                "token of {} bytes is longer than {MAX_TOKEN_LEN}",
                text.len()
            )));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(SasError::new(SasErrorKind::Missing, "empty token"));
        }
        // Still encoded as a query parameter value: no '=' survives that encoding.
        let decoded;
        let mut text = text;
        if !text.contains('=') && text.contains('%') {
            decoded = pct::decode(text, false)
                .map_err(|e| malformed(format!("token text: {}", e.as_str())))?;
            text = decoded.trim();
        }
        let fields = match strip_prefix_ignore_case(text, TOKEN_PREFIX) {
            Some(rest) => {
                let trimmed = rest.trim_start_matches([' ', '\t', '+']);
                if trimmed.len() == rest.len() {
                    return Err(malformed(format!("no space after {TOKEN_PREFIX}")));
                }
                trimmed
            }
            None => text,
        };

        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in fields.split('&').filter(|f| !f.is_empty()) {
            let (name, value) = field
                .split_once('=')
                .ok_or_else(|| malformed(format!("field {:?} has no '='", pct::excerpt(field))))?;
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.is_some() {
                return Err(malformed(format!("field {name:?} given twice")));
            }
            if value.is_empty() {
                return Err(malformed(format!("field {name:?} is empty")));
            }
            *slot = Some(value);
        }
        let missing = |name| malformed(format!("field {name:?} is missing"));
        let resource = sr.ok_or_else(|| missing("sr"))?;
        let sig = sig.ok_or_else(|| missing("sig"))?;
        let se = se.ok_or_else(|| missing("se"))?;
        let skn = skn.ok_or_else(|| missing("skn"))?;

        pct::decode(resource, false).map_err(|e| malformed(format!("sr: {}", e.as_str())))?;
        let sig = pct::decode(sig, false).map_err(|e| malformed(format!("sig: {}", e.as_str())))?;
        let signature = decode_base64(sig.trim())
            .ok_or_else(|| malformed(format!("sig {:?} is not base64", pct::excerpt(&sig))))?;
        let expiry = parse_unix_seconds(se)
            .ok_or_else(|| malformed(format!("se {:?} is not a number", pct::excerpt(se))))?;
        let key_name = pct::decode(skn, false)
            .map_err(|e| malformed(format!("skn: {}", e.as_str())))?
            .into_owned();
        Ok(Self {
            resource: resource.to_owned(),
            signature,
            expiry,
            key_name,
        })
    }

    /// The signed resource, `sr`, exactly as received: still percent-encoded.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The expiry, `se`, in Unix seconds.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// The name of the signing key, `skn`, decoded.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The signature bytes (the decoded `sig`).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Whether the token has expired at `now` (Unix seconds): it is valid while `now < se`.
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expiry
    }

    /// Whether the signature is `key`'s, compared in constant time.
    pub fn is_signed_by(&self, key: &str) -> bool {
        hmac(key.as_bytes(), &self.resource, self.expiry)
            .verify_slice(&self.signature)
            .is_ok()
    }
}

impl fmt::Display for SharedAccessSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX} sr={}&sig={}&se={}&skn={}",
            self.resource,
            pct::encode_component(&STANDARD.encode(&self.signature)),
            self.expiry,
            pct::encode_component(&self.key_name)
        )
    }
}

impl fmt::Debug for SharedAccessSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedAccessSignature")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl FromStr for SharedAccessSignature {
    type Err = SasError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() {
        return None;
    }
    LENIENT_BASE64
        .decode(s)
        .or_else(|_| LENIENT_BASE64_URL.decode(s))
        .ok()
        .filter(|bytes| !bytes.is_empty())
}

fn parse_unix_seconds(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Keys and verification

/// A named key: the secret, the rights it grants and, optionally, the path it is limited to.
///
/// `Debug` leaves the secret out.
#[derive(Clone)]
pub struct SasKey {
    name: String,
    key: String,
    rights: Rights,
    scope: Option<String>,
}

impl SasKey {
    /// A key named `name` with secret `key` (its UTF-8 bytes are the HMAC key), granting
    /// `rights` on every path.
    pub fn new(name: impl Into<String>, key: impl Into<String>, rights: impl Into<Rights>) -> Self {
        Self {
            name: name.into(),
            key: key.into(),
            rights: rights.into(),
            scope: None,
        }
    }

    /// Limits the key to `path` and the paths below it (segment-wise: scope `a/b` covers `a/b`
    /// and `a/b/c`, not `a/bc`). Leading and trailing slashes are ignored; an empty scope covers
    /// everything.
    pub fn with_scope(mut self, path: &str) -> Self {
        let scope = segments(path).collect::<Vec<_>>().join("/");
        self.scope = (!scope.is_empty()).then_some(scope);
        self
    }

    /// The key's name, as tokens give it in `skn`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rights the key grants.
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// The path the key is limited to, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// Signs a token with this key for `resource` (a URL, not yet encoded), valid until `expiry`.
    pub fn sign(&self, resource: &str, expiry: u64) -> SharedAccessSignature {
        SharedAccessSignature::sign(&self.name, &self.key, resource, expiry)
    }
}

impl fmt::Debug for SasKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasKey")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What a handshake asks for: the host it reached, the entity path, the right its action needs,
/// and the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Access<'a> {
    /// The host the client connected to (its `Host` header, a port is ignored); `None` accepts a
    /// token for any host.
    pub host: Option<&'a str>,
    /// The entity path (`hyco`, `orders/eu`), decoded; leading and trailing slashes are ignored.
    pub path: &'a str,
    /// The right the action needs (the relay address's `Action::required_right`).
    pub right: Right,
    /// The current time in Unix seconds.
    pub now: u64,
}

impl<'a> Access<'a> {
    /// Access to `path` needing `right` at `now`, for any host.
    pub fn new(path: &'a str, right: Right, now: u64) -> Self {
        Self {
            host: None,
            path,
            right,
            now,
        }
    }

    /// The same access, reached through `host`.
    pub fn with_host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }
}

/// The keys a relay accepts, looked up by name.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<SasKey>,
}

impl KeySet {
    /// An empty set: every token is refused with [`SasErrorKind::UnknownKey`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`, replacing a key of the same name, and returns the set.
    pub fn with(mut self, key: SasKey) -> Self {
        self.insert(key);
        self
    }

    /// Adds `key`, returning the key of the same name it replaces.
    pub fn insert(&mut self, key: SasKey) -> Option<SasKey> {
        match self.keys.iter_mut().find(|k| k.name == key.name) {
            Some(slot) => Some(std::mem::replace(slot, key)),
            None => {
                self.keys.push(key);
                None
            }
        }
    }

    /// The key named `name`.
    pub fn get(&self, name: &str) -> Option<&SasKey> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `token` for `access`, returning the key that signed it.
    ///
    /// # Errors
    /// In the order checked: [`SasErrorKind::UnknownKey`], [`SasErrorKind::BadSignature`],
    /// [`SasErrorKind::Expired`], [`SasErrorKind::WrongAudience`],
    /// [`SasErrorKind::InsufficientRights`] (the key lacks the right, or its scope does not cover
    /// the path). See [`SasErrorKind::http_status`] for the status to answer.
    pub fn verify(
        &self,
        token: &SharedAccessSignature,
        access: &Access<'_>,
    ) -> Result<&SasKey, SasError> {
        let key = self.get(&token.key_name).ok_or_else(|| {
            SasError::new(
                SasErrorKind::UnknownKey,
                format!("no key named {:?}", pct::excerpt(&token.key_name)),
            )
        })?;
        if !token.is_signed_by(&key.key) {
            return Err(SasError::new(
                SasErrorKind::BadSignature,
                format!("signature does not match key {:?}", key.name),
            ));
        }
        if token.is_expired(access.now) {
            return Err(SasError::new(
                SasErrorKind::Expired,
                format!("expired at {}, now is {}", token.expiry, access.now),
            ));
        }
        check_audience(&token.resource, access)?;
        if !key.rights.allows(access.right) {
            return Err(SasError::new(
                SasErrorKind::InsufficientRights,
                format!("key {:?} does not grant {}", key.name, access.right),
            ));
        }
        if let Some(scope) = &key.scope {
            if !is_segment_prefix(scope, access.path) {
                return Err(SasError::new(
                    SasErrorKind::InsufficientRights,
                    format!(
                        "key {:?} is limited to {scope:?}, not {:?}",
                        key.name,
                        pct::excerpt(access.path)
                    ),
                ));
            }
        }
        Ok(key)
    }

    /// Parses `token` and [verifies](KeySet::verify) it.
    ///
    /// # Errors
    /// Those of [`SharedAccessSignature::parse`] and [`KeySet::verify`].
    pub fn verify_str(&self, token: &str, access: &Access<'_>) -> Result<&SasKey, SasError> {
        self.verify(&SharedAccessSignature::parse(token)?, access)
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Whether the segments of `prefix` are the first segments of `path`.
fn is_segment_prefix(prefix: &str, path: &str) -> bool {
    let mut path = segments(path);
    segments(prefix).all(|p| path.next() == Some(p))
}

/// Removes a port (`host:443`, `[::1]:443`) and user information from an authority.
fn host_of(authority: &str) -> &str {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn check_audience(resource: &str, access: &Access<'_>) -> Result<(), SasError> {
    let wrong = |why: String| SasError::new(SasErrorKind::WrongAudience, why);
    // `parse` checked that `sr` decodes; a token built otherwise may not.
    let decoded = pct::decode(resource, false).map_err(|e| wrong(format!("sr: {}", e.as_str())))?;
    let rest = decoded
        .split_once("://")
        .map_or(&*decoded, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if let Some(expected) = access.host {
        let (host, expected) = (host_of(authority), host_of(expected));
        if !host.eq_ignore_ascii_case(expected) {
            return Err(wrong(format!(
                "token is for host {:?}, not {:?}",
                pct::excerpt(host),
                pct::excerpt(expected)
            )));
        }
    }
    // A path inside `sr` may itself be escaped (`E` applied to an escaped URL): decode its
    // segments once more when that works.
    let mut entity = segments(access.path);
    for seg in segments(path) {
        let seg = pct::decode(seg, false).unwrap_or(std::borrow::Cow::Borrowed(seg));
        if entity.next() != Some(&*seg) {
            return Err(wrong(format!(
                "token is for path {:?}, not {:?}",
                pct::excerpt(path),
                pct::excerpt(access.path)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "secretkey";
    const SE: u64 = 1_700_000_000;
    const BEFORE: u64 = SE - 60;

    fn root() -> KeySet {
        KeySet::new().with(SasKey::new("root", KEY, Rights::MANAGE))
    }

    #[test]
    fn the_three_protocol_test_vectors() {
        for (resource, sig) in [
            (
                "http://contoso.servicebus.windows.net/hyco/",
                "Sac1n1QBEa7E6Gr99cFOu8c5kPgp+vK0eoGCgX3tULs=",
            ),
            (
                "http://contoso.servicebus.windows.net/hyco",
                "kLTf9mN4FuYV2IYYjHCfwXx3BaWurunhZboEHHy/ds8=",
            ),
            (
                "http://contoso.servicebus.windows.net:443/hyco",
                "rAGZkhUzFiZ18CsY/n2q7+6wwpIXD83wrBDPpAGw0cY=",
            ),
        ] {
            let token = SharedAccessSignature::sign("root", KEY, resource, SE);
            assert_eq!(STANDARD.encode(token.signature()), sig, "{resource}");
            // And a token written by a client that left `+` and `/` unescaped verifies.
            let text = format!(
                "SharedAccessSignature sr={}&sig={sig}&se={SE}&skn=root",
                pct::encode_component(resource)
            );
            let parsed = SharedAccessSignature::parse(&text).unwrap();
            assert_eq!(parsed, token);
            let access = Access::new("hyco", Right::Send, BEFORE)
                .with_host("Contoso.ServiceBus.Windows.Net:443");
            root().verify(&parsed, &access).unwrap();
        }
    }

    #[test]
    fn display_and_parse_round_trip() {
        let token = SharedAccessSignature::sign("my key", KEY, "http://h/p", SE);
        let text = token.to_string();
        assert!(text.starts_with("SharedAccessSignature sr=http%3A%2F%2Fh%2Fp&sig="));
        assert!(text.ends_with("&se=1700000000&skn=my%20key"));
        assert_eq!(SharedAccessSignature::parse(&text).unwrap(), token);
        assert_eq!(text.parse::<SharedAccessSignature>().unwrap(), token);
        let debug = format!("{token:?}");
        assert!(!debug.contains("sig"), "{debug}");
    }

    #[test]
    fn parsing_is_tolerant() {
        let token = SharedAccessSignature::sign("root", KEY, "http://h/hyco", SE);
        let sig = pct::encode_component(&STANDARD.encode(token.signature()));
        let sr = token.resource();
        let forms = [
            format!("SharedAccessSignature skn=root&se={SE}&sig={sig}&sr={sr}"),
            format!("sharedaccesssignature   SR={sr}&Sig={sig}&SE={SE}&skn=root&extra=1"),
            format!("sr={sr}&sig={sig}&se={SE}&skn=root"),
            format!(
                "SharedAccessSignature sr={sr}&sig={}&se={SE}&skn=root",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(token.signature())
            ),
            // As it stands in an `sb-hc-token` query parameter, and form-encoded.
            pct::encode_component(&token.to_string()),
            pct::encode_component(&token.to_string()).replacen("%20", "+", 1),
        ];
        for form in forms {
            let parsed =
                SharedAccessSignature::parse(&form).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(parsed, token, "{form}");
        }
    }

    #[test]
    fn the_hmac_covers_the_raw_sr() {
        // Lower-case escapes, as another client writes them: signed as is, verified as is.
        let sr = "http%3a%2f%2fcontoso.servicebus.windows.net%2fhyco%2f";
        let token = SharedAccessSignature::sign_encoded("root", KEY, sr, SE);
        let parsed = SharedAccessSignature::parse(&token.to_string()).unwrap();
        assert_eq!(parsed.resource(), sr);
        root()
            .verify(&parsed, &Access::new("hyco", Right::Listen, BEFORE))
            .unwrap();
    }

    #[test]
    fn malformed_tokens() {
        let ok = SharedAccessSignature::sign("root", KEY, "http://h/p", SE).to_string();
        let cases = [
            ok.replace("&se=", "&se=1&se="),
            ok.replace("skn=root", ""),
            ok.replace("se=1700000000", "se=soon"),
            ok.replace("se=1700000000", "se=+1700000000"),
            ok.replace("se=1700000000", "se=99999999999999999999999"),
            ok.replace("sig=", "sig=!!"),
            ok.replace("sig=", "sig=%zz"),
            ok.replace("sr=", "sr=%"),
            ok.replace("&skn=", "&skn"),
            ok.replace("sr=http", "sr=&x=http"),
            ok.replace("SharedAccessSignature ", "SharedAccessSignature"),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ];
        for case in cases {
            let err = SharedAccessSignature::parse(&case).unwrap_err();
            assert_eq!(err.kind(), SasErrorKind::Malformed, "{case}: {err}");
            assert_eq!(err.http_status(), 401);
        }
        assert_eq!(
            SharedAccessSignature::parse("  ").unwrap_err().kind(),
            SasErrorKind::Missing
        );
        assert_eq!(SasError::missing().http_status(), 401);
        assert!(
            SasError::missing()
                .to_string()
                .starts_with("missing token: ")
        );
    }

    #[test]
    fn unknown_key_and_bad_signature() {
        let keys = root();
        let access = Access::new("p", Right::Send, BEFORE);
        let other = SharedAccessSignature::sign("other", KEY, "http://h/p", SE);
        let err = keys.verify(&other, &access).unwrap_err();
        assert_eq!(
            (err.kind(), err.http_status()),
            (SasErrorKind::UnknownKey, 401)
        );
        let forged = SharedAccessSignature::sign("root", "guess", "http://h/p", SE);
        let err = keys.verify(&forged, &access).unwrap_err();
        assert_eq!(
            (err.kind(), err.http_status()),
            (SasErrorKind::BadSignature, 401)
        );
        // A signature over another expiry does not verify: `se` is signed.
        let token = SharedAccessSignature::sign("root", KEY, "http://h/p", SE);
        let longer = token.to_string().replace("se=1700000000", "se=1800000000");
        let err = keys.verify_str(&longer, &access).unwrap_err();
        assert_eq!(err.kind(), SasErrorKind::BadSignature);
        // Truncated signatures are refused, not compared on a prefix.
        let short = SharedAccessSignature {
            signature: token.signature()[..16].to_vec(),
            ..token
        };
        assert_eq!(
            keys.verify(&short, &access).unwrap_err().kind(),
            SasErrorKind::BadSignature
        );
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let keys = root();
        let token = SharedAccessSignature::sign("root", KEY, "http://h/p", SE);
        assert!(
            keys.verify(&token, &Access::new("p", Right::Send, SE - 1))
                .is_ok()
        );
        for now in [SE, SE + 1] {
            let err = keys
                .verify(&token, &Access::new("p", Right::Send, now))
                .unwrap_err();
            assert_eq!(
                (err.kind(), err.http_status()),
                (SasErrorKind::Expired, 401)
            );
        }
    }

    #[test]
    fn audience_rules() {
        let keys = root();
        let check = |resource: &str, host: &str, path: &str| {
            let token = SharedAccessSignature::sign("root", KEY, resource, SE);
            keys.verify(
                &token,
                &Access::new(path, Right::Listen, BEFORE).with_host(host),
            )
            .map(|_| ())
            .map_err(|e| e.kind())
        };
        let wrong = Err(SasErrorKind::WrongAudience);
        assert_eq!(
            check("https://H.example:9443/a/b/", "h.example", "a/b"),
            Ok(())
        );
        assert_eq!(check("sb://h.example/a", "h.example:80", "a/b/c"), Ok(()));
        assert_eq!(check("http://h.example/", "h.example", "anything"), Ok(()));
        assert_eq!(check("h.example/a", "h.example", "/a/"), Ok(()));
        assert_eq!(check("http://[::1]:80/a", "[::1]", "a"), Ok(()));
        assert_eq!(check("http://h.example/a%20b", "h.example", "a b"), Ok(()));
        assert_eq!(check("http://other.example/a", "h.example", "a"), wrong);
        assert_eq!(check("http://h.example/a", "h.example", "ab"), wrong);
        assert_eq!(check("http://h.example/a/b", "h.example", "a"), wrong);
        assert_eq!(check("http://h.example/A", "h.example", "a"), wrong);
        let token = SharedAccessSignature::sign("root", KEY, "http://h.example/a", SE);
        let err = keys
            .verify(&token, &Access::new("b", Right::Listen, BEFORE))
            .unwrap_err();
        assert_eq!(err.http_status(), 403);
    }

    #[test]
    fn rights_and_scope() {
        let keys = KeySet::new()
            .with(SasKey::new("listen", KEY, Right::Listen))
            .with(SasKey::new("send", KEY, Rights::SEND))
            .with(SasKey::new("both", KEY, Rights::LISTEN | Right::Send))
            .with(SasKey::new("manage", KEY, Right::Manage))
            .with(SasKey::new("scoped", KEY, Right::Manage).with_scope("/orders/"));
        let verify = |name: &str, path: &str, right| {
            let token = SharedAccessSignature::sign(name, KEY, "http://h/", SE);
            keys.verify(&token, &Access::new(path, right, BEFORE))
                .map(|k| k.name().to_owned())
                .map_err(|e| (e.kind(), e.http_status()))
        };
        let denied = Err((SasErrorKind::InsufficientRights, 403));
        assert!(verify("listen", "p", Right::Listen).is_ok());
        assert_eq!(verify("listen", "p", Right::Send), denied);
        assert_eq!(verify("send", "p", Right::Listen), denied);
        assert!(verify("send", "p", Right::Send).is_ok());
        assert!(verify("both", "p", Right::Send).is_ok());
        assert_eq!(verify("both", "p", Right::Manage), denied);
        for right in [Right::Listen, Right::Send, Right::Manage] {
            assert!(verify("manage", "p", right).is_ok());
        }
        assert!(verify("scoped", "orders", Right::Send).is_ok());
        assert!(verify("scoped", "orders/eu", Right::Send).is_ok());
        assert_eq!(verify("scoped", "ordersx", Right::Send), denied);
        assert_eq!(verify("scoped", "other", Right::Send), denied);
        assert_eq!(keys.get("scoped").unwrap().scope(), Some("orders"));
    }

    #[test]
    fn rights_parse_print_and_combine() {
        assert_eq!("listen".parse::<Right>().unwrap(), Right::Listen);
        assert_eq!(" MANAGE ".parse::<Right>().unwrap(), Right::Manage);
        assert_eq!(
            "x".parse::<Right>().unwrap_err().kind(),
            SasErrorKind::Malformed
        );
        let rights: Rights = [Right::Send, Right::Listen].into_iter().collect();
        assert_eq!(format!("{rights:?}"), "Rights(Listen | Send)");
        assert_eq!(Right::Send.to_string(), "Send");
        assert!(!Rights::NONE.allows(Right::Listen));
        assert!(Rights::MANAGE.allows(Right::Send));
    }

    #[test]
    fn keys_hide_their_secret_and_replace_by_name() {
        let key = SasKey::new("k", "hunter2", Right::Send);
        assert!(!format!("{key:?}").contains("hunter2"));
        let mut keys = KeySet::new();
        assert!(keys.is_empty());
        assert!(keys.insert(key.clone()).is_none());
        assert!(
            keys.insert(SasKey::new("k", "other", Right::Listen))
                .is_some()
        );
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.get("k").unwrap().rights(), Rights::LISTEN);
        let token = key.sign("http://h/p", SE);
        assert!(token.is_signed_by("hunter2"));
        assert!(!token.is_signed_by("hunter3"));
    }
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
