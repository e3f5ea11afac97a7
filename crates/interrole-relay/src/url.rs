//! Relay addresses: the request target of every handshake, parsed and built.
//!
//! ```text
//! /$hc/{path}?sb-hc-action=listen[&sb-hc-id={id}][&sb-hc-token={token}]          listener
//! /$hc/{path}[/suffix][?app-params&]sb-hc-action=connect[&sb-hc-id=..][&sb-hc-token=..]   sender
//! /$hc/{path}[/suffix]?[app-params&]sb-hc-action=accept&sb-hc-id={id}              rendezvous
//!     ..&sb-hc-statusCode={int}&sb-hc-statusDescription={text}                     reject
//! /$hc/{path}?sb-hc-action=request&sb-hc-id={id}                                   HTTP rendezvous
//! /$hc/{path}?sb-hc-action=publish&sb-hc-id={instance}[&sb-hc-token=..]            multicast publisher
//! /$hc/{path}?sb-hc-action=subscribe&sb-hc-id={instance}[&sb-hc-token=..]          multicast subscriber
//! /{path}[/suffix][?..]                                                            HTTP sender (no $hc)
//! ```
//!
//! [`RelayAddress::parse`] takes the request target as the HTTP request line carries it (origin
//! form, `/$hc/..`) or an absolute URL (`wss://host/$hc/..`, whose scheme and authority it
//! ignores), and [`RelayAddress::to_request_target`] writes one back.
//!
//! ```
//! use interrole_relay::url::{Action, RelayAddress, Rendezvous, UrlLimits};
//!
//! let sender = RelayAddress::parse(
//!     "/$hc/hyco/orders?region=eu&sb-hc-action=connect&sb-hc-id=c1",
//!     &UrlLimits::default(),
//! )?;
//! assert_eq!(sender.action(), Action::Connect);
//! assert_eq!(sender.path(), "hyco/orders");
//! assert_eq!(sender.id(), Some("c1"));
//! assert_eq!(sender.app_query(), "region=eu");
//! // The listener is told to accept at an address that carries the suffix and parameters along:
//! assert_eq!(
//!     sender.rendezvous_address("wss://relay.example", Rendezvous::Accept, "c1"),
//!     "wss://relay.example/$hc/hyco/orders?region=eu&sb-hc-action=accept&sb-hc-id=c1",
//! );
//! # Ok::<(), interrole_relay::url::UrlError>(())
//! ```
//!
//! ## Paths
//!
//! The path is what follows `/$hc/` (or `/` in the HTTP form) up to `?`. It is split on `/` and
//! each segment percent-decoded. It is refused when:
//!
//! - it is empty (`/$hc/`, `/`): [`UrlErrorKind::MissingPath`], answered 404;
//! - a segment is empty (`a//b`, a leading `/`), is `.` or `..`, or decodes to a `/`, a `\` or a
//!   control character (U+0000 to U+001F, U+007F): [`UrlErrorKind::BadPath`]; one trailing `/`
//!   is allowed and is not part of [`RelayAddress::path`];
//! - an escape is bad or does not decode to UTF-8: [`UrlErrorKind::BadEncoding`];
//! - decoded, it is longer than [`UrlLimits::max_path`]: [`UrlErrorKind::PathTooLong`];
//! - for `publish` and `subscribe`, it is not a valid
//!   [`interrole_core::Topic`] (ASCII letters, digits, `- _ . : /`).
//!
//! Which leading segments name the entity and which are a sender's suffix is for the relay to
//! decide (it knows its entities): [`RelayAddress::path_prefixes`] lists the candidates.
//!
//! ## Parameters
//!
//! Parameters named `sb-hc-*` (any case) are the relay's own: `sb-hc-action`, `sb-hc-id`,
//! `sb-hc-token`, `sb-hc-statusCode`, `sb-hc-statusDescription`; others of that prefix are
//! ignored. Each may appear once ([`UrlErrorKind::DuplicateParameter`]). Every other parameter
//! is the application's: kept in order, as received, and passed through. Values are
//! percent-decoded strictly; `+` means a space only in a status description and in
//! [`RelayAddress::app_params`] (form encoding), never in an id or a token.
//!
//! A reject is an `accept` address with a status code; the unprefixed `statusCode` and
//! `statusDescription` spelling that one client sends is accepted too, so on an `accept` address
//! an application parameter of that name reads as a reject.
//!
//! Required: `sb-hc-action` in the `$hc` form; `sb-hc-id` for `accept`, `request`, `publish` and
//! `subscribe` (a valid [`interrole_core::InstanceId`] for the last two); an id is 1 to
//! [`MAX_ID_LEN`] bytes without control characters. A status code is a number from 100 to 599.

use std::borrow::Cow;
use std::fmt;

use interrole_core::{InstanceId, Topic};

use crate::pct;
use crate::sas::Right;

/// The longest `sb-hc-id` accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// The path segment that marks a Hybrid Connections address.
pub const HC_SEGMENT: &str = "$hc";

const P_ACTION: &str = "sb-hc-action";
const P_ID: &str = "sb-hc-id";
const P_TOKEN: &str = "sb-hc-token";
const P_STATUS: &str = "sb-hc-statusCode";
const P_DESCRIPTION: &str = "sb-hc-statusDescription";
const U_STATUS: &str = "statusCode";
const U_DESCRIPTION: &str = "statusDescription";

/// What a handshake is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `listen`: a listener opens its control channel.
    Listen,
    /// `connect`: a WebSocket sender asks for a connection to a listener.
    Connect,
    /// `accept`: a listener opens the rendezvous for a sender (or rejects it, see
    /// [`RelayAddress::reject`]).
    Accept,
    /// `request`: a listener opens the rendezvous for an HTTP request.
    Request,
    /// `publish`: a multicast publisher connects (interrole extension).
    Publish,
    /// `subscribe`: a multicast subscriber connects (interrole extension).
    Subscribe,
    /// An HTTP sender: a plain HTTP request to `/{path}`, without `$hc` nor action.
    Http,
}

impl Action {
    /// The value of `sb-hc-action` for this action; `None` for [`Action::Http`].
    pub fn as_param(self) -> Option<&'static str> {
        Some(match self {
            Self::Listen => "listen",
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Request => "request",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Http => return None,
        })
    }

    /// Parses an `sb-hc-action` value, in any case.
    pub fn from_param(value: &str) -> Option<Self> {
        [
            Self::Listen,
            Self::Connect,
            Self::Accept,
            Self::Request,
            Self::Publish,
            Self::Subscribe,
        ]
        .into_iter()
        .find(|a| a.as_param().is_some_and(|p| p.eq_ignore_ascii_case(value)))
    }

    /// The right a token must grant for this action: Listen for `listen` and `subscribe`, Send
    /// for `connect`, `publish` and HTTP; `None` for the rendezvous actions (`accept`,
    /// `request`), whose single-use address is the credential.
    pub fn required_right(self) -> Option<Right> {
        match self {
            Self::Listen | Self::Subscribe => Some(Right::Listen),
            Self::Connect | Self::Publish | Self::Http => Some(Right::Send),
            Self::Accept | Self::Request => None,
        }
    }

    /// Whether this is a rendezvous action (`accept` or `request`).
    pub fn is_rendezvous(self) -> bool {
        matches!(self, Self::Accept | Self::Request)
    }

    /// Whether this is a multicast action (`publish` or `subscribe`).
    pub fn is_multicast(self) -> bool {
        matches!(self, Self::Publish | Self::Subscribe)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_param().unwrap_or("http"))
    }
}

/// Which rendezvous address to build (see [`rendezvous_address`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rendezvous {
    /// The address of an `accept` control message.
    Accept,
    /// The address of a `request` control message.
    Request,
}

impl From<Rendezvous> for Action {
    fn from(r: Rendezvous) -> Self {
        match r {
            Rendezvous::Accept => Self::Accept,
            Rendezvous::Request => Self::Request,
        }
    }
}

/// The limits [`RelayAddress::parse`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UrlLimits {
    /// The longest request target, in bytes (default 16 KiB: a token is at most 4 KiB).
    pub max_target: usize,
    /// The longest path, decoded, in bytes (default 1024).
    pub max_path: usize,
}

impl Default for UrlLimits {
    fn default() -> Self {
        Self {
            max_target: 16 * 1024,
            max_path: 1024,
        }
    }
}

impl UrlLimits {
    /// These limits with `max_target` bytes for the whole request target.
    pub fn with_max_target(mut self, max_target: usize) -> Self {
        self.max_target = max_target;
        self
    }

    /// These limits with `max_path` bytes for the decoded path.
    pub fn with_max_path(mut self, max_path: usize) -> Self {
        self.max_path = max_path;
        self
    }
}

/// What is wrong with a request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UrlErrorKind {
    /// The request target is longer than [`UrlLimits::max_target`] (414).
    TargetTooLong,
    /// The decoded path is longer than [`UrlLimits::max_path`] (400).
    PathTooLong,
    /// Not a request target: no leading `/`, a fragment, a space or a control character (400).
    BadTarget,
    /// No path: there is no entity to address (404).
    MissingPath,
    /// A path segment is empty, `.` or `..`, or holds a forbidden character (400).
    BadPath,
    /// A bad percent escape, or an escape that does not decode to UTF-8 (400).
    BadEncoding,
    /// `sb-hc-action` names no known action (400).
    UnknownAction,
    /// A parameter the action needs is missing (400).
    MissingParameter,
    /// One of the relay's parameters appears twice (400).
    DuplicateParameter,
    /// A parameter's value is not acceptable: an empty or over-long id, an invalid instance id,
    /// a status code that is not a number from 100 to 599 (400).
    BadParameter,
}

impl UrlErrorKind {
    /// The HTTP status a relay answers the handshake with: 404 when there is no path, 414 when
    /// the target is too long, 400 otherwise.
    pub fn http_status(self) -> u16 {
        match self {
            Self::MissingPath => 404,
            Self::TargetTooLong => 414,
            _ => 400,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::TargetTooLong => "request target too long",
            Self::PathTooLong => "path too long",
            Self::BadTarget => "bad request target",
            Self::MissingPath => "missing path",
            Self::BadPath => "bad path",
            Self::BadEncoding => "bad percent-encoding",
            Self::UnknownAction => "unknown action",
            Self::MissingParameter => "missing parameter",
            Self::DuplicateParameter => "duplicate parameter",
            Self::BadParameter => "bad parameter",
        }
    }
}

impl fmt::Display for UrlErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request target: its [kind](UrlError::kind) and a message saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct UrlError {
    kind: UrlErrorKind,
    message: String,
}

impl UrlError {
    fn new(kind: UrlErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> UrlErrorKind {
        self.kind
    }

    /// The HTTP status to answer with (see [`UrlErrorKind::http_status`]).
    pub fn http_status(&self) -> u16 {
        self.kind.http_status()
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A listener's refusal of a sender, read off an `accept` address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reject {
    /// The HTTP status the sender's handshake fails with (100 to 599).
    pub status_code: u16,
    /// The reason phrase, decoded; empty when the listener gave none.
    pub description: String,
}

/// A parsed (or built) relay address. See the [module docs](self) for the forms and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddress {
    action: Action,
    /// Decoded segments joined by `/`, without leading or trailing slash.
    path: String,
    /// The path as received (still escaped), without the leading `/` or `/$hc/`.
    raw_path: String,
    id: Option<String>,
    token: Option<String>,
    reject: Option<Reject>,
    /// The application's parameters as received, `name=value` or `name`, in order.
    app_query: Vec<String>,
}

impl RelayAddress {
    /// An address for `action` on `path` (decoded, `/`-separated; a leading or trailing `/` is
    /// ignored), with no id, token or parameters. The builder methods do not check what
    /// [`RelayAddress::parse`] checks about parameters (a `publish` address needs an id).
    ///
    /// # Errors
    /// [`UrlErrorKind::MissingPath`], [`UrlErrorKind::BadPath`] under the [path rules](self#paths),
    /// and [`UrlErrorKind::PathTooLong`] past the default [`UrlLimits::max_path`].
    pub fn new(action: Action, path: &str) -> Result<Self, UrlError> {
        let path = path.strip_prefix('/').unwrap_or(path);
        let path = path.strip_suffix('/').unwrap_or(path);
        let raw_path = path
            .split('/')
            .map(pct::encode_segment)
            .collect::<Vec<_>>()
            .join("/");
        let path = check_path(action, &raw_path, &UrlLimits::default())?;
        Ok(Self {
            action,
            path,
            raw_path,
            id: None,
            token: None,
            reject: None,
            app_query: Vec::new(),
        })
    }

    /// This address with `sb-hc-id` set to `id`.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// This address with `sb-hc-token` set to `token` (the token text, e.g.
    /// `SharedAccessSignature sr=..`; it is escaped when written).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// This address with an application parameter appended (name and value escaped when
    /// written). A name starting with `sb-hc-` would read back as the relay's own.
    pub fn with_query_param(mut self, name: &str, value: &str) -> Self {
        self.app_query.push(format!(
            "{}={}",
            pct::encode_component(name),
            pct::encode_component(value)
        ));
        self
    }

    /// This address with a reject status (meaningful on an `accept` address).
    pub fn with_reject(mut self, status_code: u16, description: impl Into<String>) -> Self {
        self.reject = Some(Reject {
            status_code,
            description: description.into(),
        });
        self
    }

    /// Parses a request target (`/$hc/path?..`, `/path?..`) or an absolute URL
    /// (`wss://host/$hc/path?..`, the scheme and authority are ignored).
    ///
    /// # Errors
    /// A [`UrlError`] whose kind says what is wrong, and whose
    /// [`http_status`](UrlError::http_status) is the status to answer; see the
    /// [module docs](self) for the rules.
    pub fn parse(target: &str, limits: &UrlLimits) -> Result<Self, UrlError> {
        use UrlErrorKind as K;
        if target.len() > limits.max_target {
            return Err(UrlError::new(
                K::TargetTooLong,
                format!("{} bytes, the limit is {}", target.len(), limits.max_target),
            ));
        }
        let target = strip_scheme_and_authority(target);
        if let Some(c) = target
            .chars()
            .find(|&c| c == '#' || c == ' ' || c.is_control())
        {
            return Err(UrlError::new(
                K::BadTarget,
                format!("{c:?} is not allowed in a request target"),
            ));
        }
        let Some(rest) = target.strip_prefix('/') else {
            return Err(UrlError::new(
                K::BadTarget,
                format!("{:?} does not start with '/'", pct::excerpt(target)),
            ));
        };
        let (raw, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (first, after) = raw.split_once('/').unwrap_or((raw, ""));
        let is_hc = pct::decode(first, false).is_ok_and(|f| f.eq_ignore_ascii_case(HC_SEGMENT));
        let raw_path = if is_hc { after } else { raw };

        let params = Params::parse(query)?;
        let action = if is_hc {
            let value = params.action.ok_or_else(|| {
                UrlError::new(K::MissingParameter, format!("{P_ACTION} is missing"))
            })?;
            Action::from_param(&value).ok_or_else(|| {
                UrlError::new(
                    K::UnknownAction,
                    format!("{P_ACTION}={:?}", pct::excerpt(&value)),
                )
            })?
        } else {
            Action::Http
        };
        let path = check_path(action, raw_path, limits)?;

        let id = params.id.map(Cow::into_owned);
        let needs_id = matches!(
            action,
            Action::Accept | Action::Request | Action::Publish | Action::Subscribe
        );
        match &id {
            None if needs_id => {
                return Err(UrlError::new(
                    K::MissingParameter,
                    format!("{P_ID} is missing for {action}"),
                ));
            }
            Some(id) => check_id(action, id)?,
            None => {}
        }

        let mut app_query = params.app;
        let reject = if action == Action::Accept {
            match (params.status, params.description) {
                (Some(code), description) => Some(reject(&code, description)?),
                (None, Some(_)) => {
                    return Err(UrlError::new(
                        K::MissingParameter,
                        format!("{P_DESCRIPTION} without {P_STATUS}"),
                    ));
                }
                (None, None) => unprefixed_reject(&mut app_query)?,
            }
        } else {
            None
        };

        Ok(Self {
            action,
            path,
            raw_path: raw_path.to_owned(),
            id,
            token: params.token.map(Cow::into_owned),
            reject,
            app_query: app_query.into_iter().map(str::to_owned).collect(),
        })
    }

    /// What the handshake is for.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The path, decoded, without leading or trailing `/`: the entity path and any suffix.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path as received, still escaped, without the leading `/` or `/$hc/`.
    pub fn raw_path(&self) -> &str {
        &self.raw_path
    }

    /// The decoded path's segment prefixes, longest first (`a/b/c`, `a/b`, `a`): the
    /// candidates for the entity path, the rest being the sender's suffix.
    pub fn path_prefixes(&self) -> impl Iterator<Item = &str> {
        let path = self.path.as_str();
        std::iter::once(path).chain(path.rmatch_indices('/').map(move |(i, _)| &path[..i]))
    }

    /// `sb-hc-id`, decoded.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// `sb-hc-token`, decoded: the token text, for [`SharedAccessSignature::parse`](crate::sas::SharedAccessSignature::parse).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The listener's refusal, when this `accept` address carries a status code.
    pub fn reject(&self) -> Option<&Reject> {
        self.reject.as_ref()
    }

    /// The application's query parameters as received, joined by `&` (empty when there are
    /// none): what passes through to the listener.
    pub fn app_query(&self) -> String {
        self.app_query.join("&")
    }

    /// The application's query parameters, decoded (`+` as a space), in order; a parameter
    /// without `=` has an empty value.
    pub fn app_params(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.app_query.iter().map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            // `parse` and the builder checked that every part decodes.
            let decode = |s| pct::decode(s, true).unwrap_or(Cow::Borrowed(s));
            (decode(name), decode(value))
        })
    }

    /// The target with the relay's own parameters removed, `/{path}[?app-params]`: what a
    /// `request` control message carries as `requestTarget`.
    pub fn stripped_target(&self) -> String {
        let mut out = format!("/{}", self.raw_path);
        if !self.app_query.is_empty() {
            out.push('?');
            out.push_str(&self.app_query());
        }
        out
    }

    /// Writes the request target back: `/$hc/{path}?{app-params&}sb-hc-action=..` (or
    /// `/{path}?..` for [`Action::Http`]), the relay's parameters after the application's, in the
    /// order `sb-hc-action`, `sb-hc-id`, `sb-hc-token`, `sb-hc-statusCode`,
    /// `sb-hc-statusDescription`.
    pub fn to_request_target(&self) -> String {
        let mut out = String::with_capacity(self.raw_path.len() + 64);
        out.push('/');
        if self.action != Action::Http {
            out.push_str(HC_SEGMENT);
            out.push('/');
        }
        out.push_str(&self.raw_path);
        let mut params = self.app_query.clone();
        if let Some(action) = self.action.as_param() {
            params.push(format!("{P_ACTION}={action}"));
        }
        if let Some(id) = &self.id {
            params.push(format!("{P_ID}={}", pct::encode_component(id)));
        }
        if let Some(token) = &self.token {
            params.push(format!("{P_TOKEN}={}", pct::encode_component(token)));
        }
        if let Some(r) = &self.reject {
            params.push(format!("{P_STATUS}={}", r.status_code));
            params.push(format!(
                "{P_DESCRIPTION}={}",
                pct::encode_component(&r.description)
            ));
        }
        if !params.is_empty() {
            out.push('?');
            out.push_str(&params.join("&"));
        }
        out
    }

    /// The full URL: `base` (`wss://host`, a trailing `/` is ignored) followed by
    /// [`to_request_target`](RelayAddress::to_request_target).
    pub fn to_url(&self, base: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), self.to_request_target())
    }

    /// The rendezvous address for this sender (see [`rendezvous_address`]): its raw path and
    /// application parameters pass through.
    pub fn rendezvous_address(&self, base: &str, kind: Rendezvous, id: &str) -> String {
        rendezvous_address(base, &self.raw_path, &self.app_query(), kind, id)
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_request_target())
    }
}

/// Builds the address of an `accept` or `request` control message:
/// `{base}/$hc/{raw_path}?{app_query&}sb-hc-action=accept|request&sb-hc-id={E(id)}`.
///
/// `base` is the scheme and host the listener reaches the relay at (`wss://relay.example`; a
/// trailing `/` is ignored), `raw_path` the sender's path as received (escaped, without
/// `/$hc/`; a leading `/` is ignored), `app_query` the sender's application parameters as
/// received (may be empty), `id` the rendezvous id.
pub fn rendezvous_address(
    base: &str,
    raw_path: &str,
    app_query: &str,
    kind: Rendezvous,
    id: &str,
) -> String {
    let mut out = format!(
        "{}/{HC_SEGMENT}/{}?",
        base.trim_end_matches('/'),
        raw_path.trim_start_matches('/')
    );
    let app_query = app_query.trim_matches('&');
    if !app_query.is_empty() {
        out.push_str(app_query);
        out.push('&');
    }
    let action = Action::from(kind).as_param().unwrap_or_default();
    out.push_str(&format!(
        "{P_ACTION}={action}&{P_ID}={}",
        pct::encode_component(id)
    ));
    out
}

/// Appends a reject status to an accept `address`, as a listener does to refuse a sender:
/// `{address}&sb-hc-statusCode={code}&sb-hc-statusDescription={E(description)}`.
pub fn reject_address(address: &str, status_code: u16, description: &str) -> String {
    let sep = if address.contains('?') { '&' } else { '?' };
    format!(
        "{address}{sep}{P_STATUS}={status_code}&{P_DESCRIPTION}={}",
        pct::encode_component(description)
    )
}

/// `wss://host/x?y` → `/x?y`; `wss://host` and `wss://host?y` → `/` (no path); anything else
/// unchanged.
fn strip_scheme_and_authority(target: &str) -> &str {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target;
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return target;
    }
    match rest.find(['/', '?', '#']) {
        Some(i) if rest[i..].starts_with('/') => &rest[i..],
        _ => "/",
    }
}

/// Checks a raw path under the [path rules](self#paths); returns it decoded.
fn check_path(action: Action, raw: &str, limits: &UrlLimits) -> Result<String, UrlError> {
    use UrlErrorKind as K;
    let raw = raw.strip_suffix('/').unwrap_or(raw);
    if raw.is_empty() {
        return Err(UrlError::new(K::MissingPath, "no entity path"));
    }
    let mut path = String::with_capacity(raw.len());
    for segment in raw.split('/') {
        let bad = |why: &str| {
            UrlError::new(
                K::BadPath,
                format!("segment {:?} {why}", pct::excerpt(segment)),
            )
        };
        if segment.is_empty() {
            return Err(UrlError::new(K::BadPath, "empty path segment"));
        }
        let decoded = pct::decode(segment, false).map_err(|e| {
            UrlError::new(
                K::BadEncoding,
                format!("path segment {:?}: {}", pct::excerpt(segment), e.as_str()),
            )
        })?;
        if decoded == "." || decoded == ".." {
            return Err(bad("is a dot segment"));
        }
        if decoded.contains(['/', '\\']) || decoded.chars().any(char::is_control) {
            return Err(bad("holds '/', '\\' or a control character"));
        }
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&decoded);
        if path.len() > limits.max_path {
            return Err(UrlError::new(
                K::PathTooLong,
                format!("the decoded path is longer than {} bytes", limits.max_path),
            ));
        }
    }
    if action.is_multicast() {
        Topic::new(&path).map_err(|e| UrlError::new(K::BadPath, e.to_string()))?;
    }
    Ok(path)
}

fn check_id(action: Action, id: &str) -> Result<(), UrlError> {
    let bad = |why: String| UrlError::new(UrlErrorKind::BadParameter, format!("{P_ID}: {why}"));
    if id.is_empty() {
        return Err(bad("empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad(format!("longer than {MAX_ID_LEN} bytes")));
    }
    if id.chars().any(char::is_control) {
        return Err(bad("holds a control character".into()));
    }
    if action.is_multicast() {
        InstanceId::new(id).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

fn reject(code: &str, description: Option<Cow<'_, str>>) -> Result<Reject, UrlError> {
    let code = code.trim();
    let status_code = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.parse::<u16>().ok())
        .flatten()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| {
            UrlError::new(
                UrlErrorKind::BadParameter,
                format!(
                    "status code {:?} is not a number from 100 to 599",
                    pct::excerpt(code)
                ),
            )
        })?;
    Ok(Reject {
        status_code,
        description: description.map(Cow::into_owned).unwrap_or_default(),
    })
}

/// The `statusCode`/`statusDescription` spelling: taken out of the application's parameters.
fn unprefixed_reject(app: &mut Vec<&str>) -> Result<Option<Reject>, UrlError> {
    let mut code = None;
    let mut description = None;
    let mut error = None;
    app.retain(|&part| {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let slot = match pct::decode(name, false) {
            Ok(n) if n.eq_ignore_ascii_case(U_STATUS) => &mut code,
            Ok(n) if n.eq_ignore_ascii_case(U_DESCRIPTION) => &mut description,
            _ => return true,
        };
        if slot.replace(value).is_some() {
            error.get_or_insert_with(|| {
                UrlError::new(
                    UrlErrorKind::DuplicateParameter,
                    format!("{} given twice", pct::excerpt(name)),
                )
            });
        }
        false
    });
    if let Some(e) = error {
        return Err(e);
    }
    match (code, description) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(UrlError::new(
            UrlErrorKind::MissingParameter,
            format!("{U_DESCRIPTION} without {U_STATUS}"),
        )),
        (Some(code), description) => {
            let code = decode_value(U_STATUS, code, false)?;
            let description = description
                .map(|d| decode_value(U_DESCRIPTION, d, true))
                .transpose()?;
            reject(&code, description).map(Some)
        }
    }
}

fn decode_value<'a>(name: &str, value: &'a str, plus: bool) -> Result<Cow<'a, str>, UrlError> {
    pct::decode(value, plus).map_err(|e| {
        UrlError::new(
            UrlErrorKind::BadEncoding,
            format!("parameter {name}: {}", e.as_str()),
        )
    })
}

/// The query, sorted into the relay's parameters and the application's.
struct Params<'a> {
    action: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    token: Option<Cow<'a, str>>,
    status: Option<Cow<'a, str>>,
    description: Option<Cow<'a, str>>,
    app: Vec<&'a str>,
}

impl<'a> Params<'a> {
    fn parse(query: &'a str) -> Result<Self, UrlError> {
        let mut p = Self {
            action: None,
            id: None,
            token: None,
            status: None,
            description: None,
            app: Vec::new(),
        };
        for part in query.split('&').filter(|s| !s.is_empty()) {
            let (raw_name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode_value("name", raw_name, true)?;
            let lower = name.to_ascii_lowercase();
            let Some(own) = lower.strip_prefix("sb-hc-") else {
                // Checked now so that `app_params` can decode without failing.
                decode_value(&name, value, true)?;
                p.app.push(part);
                continue;
            };
            let (slot, canonical, plus) = match own {
                "action" => (&mut p.action, P_ACTION, false),
                "id" => (&mut p.id, P_ID, false),
                "token" => (&mut p.token, P_TOKEN, false),
                "statuscode" => (&mut p.status, P_STATUS, false),
                "statusdescription" => (&mut p.description, P_DESCRIPTION, true),
                _ => continue,
            };
            if slot.is_some() {
                return Err(UrlError::new(
                    UrlErrorKind::DuplicateParameter,
                    format!("{canonical} given twice"),
                ));
            }
            *slot = Some(decode_value(canonical, value, plus)?);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(target: &str) -> Result<RelayAddress, UrlError> {
        RelayAddress::parse(target, &UrlLimits::default())
    }

    fn kind(target: &str) -> UrlErrorKind {
        parse(target).unwrap_err().kind()
    }

    #[test]
    fn listener_and_sender_forms() {
        let a = parse("/$hc/hyco?sb-hc-action=listen&sb-hc-id=L1&sb-hc-token=SharedAccessSignature%20sr%3Dx%26sig%3Da%2Bb%2F%26se%3D1%26skn%3Dk").unwrap();
        assert_eq!(a.action(), Action::Listen);
        assert_eq!(a.path(), "hyco");
        assert_eq!(a.id(), Some("L1"));
        assert_eq!(
            a.token(),
            Some("SharedAccessSignature sr=x&sig=a+b/&se=1&skn=k")
        );
        assert_eq!(a.app_query(), "");

        let s = parse("wss://h.example:443/$hc/hyco/a%20b/?x=1&flag&SB-HC-ACTION=Connect").unwrap();
        assert_eq!(s.action(), Action::Connect);
        assert_eq!(s.path(), "hyco/a b");
        assert_eq!(s.raw_path(), "hyco/a%20b/");
        assert_eq!(s.id(), None);
        assert_eq!(s.app_query(), "x=1&flag");
        let params: Vec<_> = s.app_params().collect();
        assert_eq!(
            params,
            [("x".into(), "1".into()), ("flag".into(), "".into())]
        );
        assert_eq!(s.stripped_target(), "/hyco/a%20b/?x=1&flag");
        assert_eq!(s.path_prefixes().collect::<Vec<_>>(), ["hyco/a b", "hyco"]);
    }

    #[test]
    fn http_sender_form_strips_the_relay_parameters() {
        let h = parse("/hyco/abc?x=1&sb-hc-token=t&sb-hc-other=2").unwrap();
        assert_eq!(h.action(), Action::Http);
        assert_eq!(h.path(), "hyco/abc");
        assert_eq!(h.token(), Some("t"));
        assert_eq!(h.stripped_target(), "/hyco/abc?x=1");
        assert_eq!(h.to_request_target(), "/hyco/abc?x=1&sb-hc-token=t");
        assert_eq!(Action::Http.required_right(), Some(Right::Send));
    }

    #[test]
    fn multicast_actions_need_an_instance_id_and_a_topic() {
        let p = parse("/$hc/bus/orders?sb-hc-action=publish&sb-hc-id=worker-1").unwrap();
        assert_eq!((p.action(), p.id()), (Action::Publish, Some("worker-1")));
        assert_eq!(p.action().required_right(), Some(Right::Send));
        assert_eq!(Action::Subscribe.required_right(), Some(Right::Listen));
        assert_eq!(
            kind("/$hc/bus?sb-hc-action=subscribe"),
            UrlErrorKind::MissingParameter
        );
        assert_eq!(
            kind("/$hc/bus?sb-hc-action=subscribe&sb-hc-id=a%20b"),
            UrlErrorKind::BadParameter
        );
        assert_eq!(
            kind("/$hc/b%20us?sb-hc-action=publish&sb-hc-id=a"),
            UrlErrorKind::BadPath
        );
    }

    #[test]
    fn rejects_in_both_spellings() {
        let r = parse("/$hc/hyco?sb-hc-action=accept&sb-hc-id=1&sb-hc-statusCode=403&sb-hc-statusDescription=Go+away%21").unwrap();
        assert_eq!(
            r.reject(),
            Some(&Reject {
                status_code: 403,
                description: "Go away!".into()
            })
        );
        let r = parse(
            "/$hc/hyco?x=1&sb-hc-action=accept&sb-hc-id=1&statusCode=401&statusDescription=no",
        )
        .unwrap();
        assert_eq!(r.reject().unwrap().status_code, 401);
        assert_eq!(r.app_query(), "x=1");
        let r = parse("/$hc/hyco?sb-hc-action=accept&sb-hc-id=1&sb-hc-statusCode=500").unwrap();
        assert_eq!(r.reject().unwrap().description, "");
        // On other actions these are ordinary parameters.
        let c = parse("/$hc/hyco?statusCode=401&sb-hc-action=connect").unwrap();
        assert_eq!(
            (c.reject(), c.app_query().as_str()),
            (None, "statusCode=401")
        );
        for bad in ["99", "600", "abc", "4000", "+40"] {
            let t = format!("/$hc/h?sb-hc-action=accept&sb-hc-id=1&sb-hc-statusCode={bad}");
            assert_eq!(kind(&t), UrlErrorKind::BadParameter, "{bad}");
            let t = format!("/$hc/h?sb-hc-action=accept&sb-hc-id=1&statusCode={bad}");
            assert_eq!(kind(&t), UrlErrorKind::BadParameter, "{bad}");
        }
        assert_eq!(
            kind("/$hc/h?sb-hc-action=accept&sb-hc-id=1&sb-hc-statusDescription=x"),
            UrlErrorKind::MissingParameter
        );
        assert_eq!(
            kind("/$hc/h?sb-hc-action=accept&sb-hc-id=1&statusDescription=x"),
            UrlErrorKind::MissingParameter
        );
        assert_eq!(
            kind("/$hc/h?sb-hc-action=accept&sb-hc-id=1&statusCode=400&statusCode=401"),
            UrlErrorKind::DuplicateParameter
        );
    }

    #[test]
    fn rendezvous_and_reject_addresses() {
        let s = parse("/$hc/hyco/sfx?a=1&sb-hc-action=connect&sb-hc-id=x").unwrap();
        let accept = s.rendezvous_address("wss://relay.example/", Rendezvous::Accept, "id 1");
        assert_eq!(
            accept,
            "wss://relay.example/$hc/hyco/sfx?a=1&sb-hc-action=accept&sb-hc-id=id%201"
        );
        let back = RelayAddress::parse(&accept, &UrlLimits::default()).unwrap();
        assert_eq!((back.action(), back.id()), (Action::Accept, Some("id 1")));
        assert_eq!(back.app_query(), "a=1");
        let refused = reject_address(&accept, 404, "not here");
        let back = RelayAddress::parse(&refused, &UrlLimits::default()).unwrap();
        assert_eq!(back.reject().unwrap().description, "not here");
        assert_eq!(
            rendezvous_address("wss://h", "/hyco", "", Rendezvous::Request, "r"),
            "wss://h/$hc/hyco?sb-hc-action=request&sb-hc-id=r"
        );
        assert_eq!(
            reject_address("wss://h/x", 500, ""),
            "wss://h/x?sb-hc-statusCode=500&sb-hc-statusDescription="
        );
    }

    #[test]
    fn builder_writes_what_parse_reads() {
        let a = RelayAddress::new(Action::Accept, "/hy co/sfx/")
            .unwrap()
            .with_query_param("k y", "v&w")
            .with_id("1")
            .with_token("SharedAccessSignature sr=a&sig=b+c&se=1&skn=k")
            .with_reject(410, "Gone for good");
        let target = a.to_request_target();
        assert!(
            target.starts_with(
                "/$hc/hy%20co/sfx?k%20y=v%26w&sb-hc-action=accept&sb-hc-id=1&sb-hc-token="
            ),
            "{target}"
        );
        assert_eq!(parse(&target).unwrap(), a);
        assert_eq!(a.to_url("wss://h/"), format!("wss://h{target}"));
        assert_eq!(a.to_string(), target);
    }

    #[test]
    fn path_errors() {
        assert_eq!(kind("/$hc/?sb-hc-action=listen"), UrlErrorKind::MissingPath);
        assert_eq!(kind("/$hc?sb-hc-action=listen"), UrlErrorKind::MissingPath);
        assert_eq!(kind("/"), UrlErrorKind::MissingPath);
        assert_eq!(kind("wss://host"), UrlErrorKind::MissingPath);
        assert_eq!(parse("/").unwrap_err().http_status(), 404);
        for bad in [
            "a//b", "a/./b", "a/%2E%2E", "a%2Fb", "a%5Cb", "a%00b", "//a",
        ] {
            let t = format!("/$hc/{bad}?sb-hc-action=listen");
            assert_eq!(kind(&t), UrlErrorKind::BadPath, "{bad}");
        }
        assert_eq!(
            kind("/$hc/a%zz?sb-hc-action=listen"),
            UrlErrorKind::BadEncoding
        );
        assert_eq!(
            kind("/$hc/a%FF?sb-hc-action=listen"),
            UrlErrorKind::BadEncoding
        );
        let limits = UrlLimits::default().with_max_path(8);
        let err = RelayAddress::parse("/$hc/abcd/efgh?sb-hc-action=listen", &limits).unwrap_err();
        assert_eq!(
            (err.kind(), err.http_status()),
            (UrlErrorKind::PathTooLong, 400)
        );
        assert!(RelayAddress::parse("/$hc/abcd/efg?sb-hc-action=listen", &limits).is_ok());
        let limits = UrlLimits::default().with_max_target(10);
        let err = RelayAddress::parse("/$hc/abcdefgh", &limits).unwrap_err();
        assert_eq!(
            (err.kind(), err.http_status()),
            (UrlErrorKind::TargetTooLong, 414)
        );
        assert!(RelayAddress::new(Action::Listen, "").is_err());
        assert!(RelayAddress::new(Action::Listen, "a/../b").is_err());
    }

    #[test]
    fn target_and_parameter_errors() {
        assert_eq!(kind("hyco"), UrlErrorKind::BadTarget);
        assert_eq!(
            kind("/$hc/a b?sb-hc-action=listen"),
            UrlErrorKind::BadTarget
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen#frag"),
            UrlErrorKind::BadTarget
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen\r\n"),
            UrlErrorKind::BadTarget
        );
        assert_eq!(kind("/$hc/a"), UrlErrorKind::MissingParameter);
        assert_eq!(
            kind("/$hc/a?sb-hc-action=shout"),
            UrlErrorKind::UnknownAction
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=accept"),
            UrlErrorKind::MissingParameter
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=request"),
            UrlErrorKind::MissingParameter
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen&sb-hc-action=listen"),
            UrlErrorKind::DuplicateParameter
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen&SB-HC-ID=1&sb-hc-id=2"),
            UrlErrorKind::DuplicateParameter
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen&sb-hc-id="),
            UrlErrorKind::BadParameter
        );
        let long = format!("/$hc/a?sb-hc-action=listen&sb-hc-id={}", "x".repeat(257));
        assert_eq!(kind(&long), UrlErrorKind::BadParameter);
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen&sb-hc-id=%01"),
            UrlErrorKind::BadParameter
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen&sb-hc-token=%"),
            UrlErrorKind::BadEncoding
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen&x=%zz"),
            UrlErrorKind::BadEncoding
        );
        assert_eq!(
            kind("/$hc/a?sb-hc-action=listen&%zz=1"),
            UrlErrorKind::BadEncoding
        );
        // The `$hc` segment may be escaped, and the action is case-insensitive.
        assert_eq!(
            parse("/%24HC/a?sb-hc-action=LISTEN").unwrap().action(),
            Action::Listen
        );
    }

    #[test]
    fn actions_print_and_classify() {
        assert_eq!(Action::Subscribe.to_string(), "subscribe");
        assert_eq!(Action::Http.to_string(), "http");
        assert_eq!(Action::from_param("Publish"), Some(Action::Publish));
        assert_eq!(Action::from_param("http"), None);
        assert!(Action::Accept.is_rendezvous() && !Action::Listen.is_rendezvous());
        assert_eq!(Action::Request.required_right(), None);
    }
}
