//! The edge: everything that stands between a hostile client and the routing table.
//!
//! Invariants, each owned by one module:
//! - [`conn`]: no connection is held without progress. The protocol choice (HTTP/1.x or h2c)
//!   never waits for bytes that cannot come; a request head must arrive within
//!   `clients.header_timeout`, an idle keep-alive connection is closed after
//!   `clients.keepalive_timeout`, a client that stops reading is dropped after
//!   `clients.send_timeout`, and beyond `clients.max_connections` a new connection is closed at
//!   once while existing ones keep working.
//! - [`framing`]: an HTTP/1 request head is accepted only if every parser on the way would read
//!   it the same way (one Host, one framing, no bare LF, no obs-fold, no NUL/CR in fields);
//!   anything else is a 400 (431 and 414 for the size limits) and the connection is closed.
//! - [`host`]: the Host routed on is a valid RFC 3986 reg-name or IP literal with an optional
//!   port, or the request is a 400.
//! - [`path`]: routing sees the normalised path (unreserved percent-escapes decoded,
//!   dot-segments removed); no request reaches a prefix route's backend with a path that
//!   resolves outside that prefix.
//! - [`forwarded`]: `Forwarded`, `X-Forwarded-*` and `X-Real-IP` reach a backend only as hawser
//!   states them, or appended to when the peer is a trusted proxy.
//! - [`tunnel`]: when hawser stops or hands over, a WebSocket still open gets a close frame
//!   1001 "going away" between two of the backend's frames, never in the middle of one.

pub mod conn;
pub mod forwarded;
pub mod framing;
pub mod host;
pub mod https;
pub mod path;
pub mod tunnel;
