//! popek's REST API: an HTTP/1.1 server on a Unix socket in front of a [`Backend`] (the VMM),
//! the Prometheus rendering of its counters, and the client `popek ctl` uses.
//!
//! The routes are in [`ROUTES`]; request and reply bodies are the `api-types` crate's JSON types,
//! and every error reply is an [`api_types::ApiError`]. `docs/api/openapi.json` describes it all.

pub mod backend;
pub mod client;
mod http;
pub mod metrics;
mod routes;
mod server;

pub use backend::{Backend, BackendError};
pub use routes::{MAX_BODY, ROUTES};
pub use server::{ApiServer, ServeError, ServeOptions, serve, serve_with};
