//! swr-gate: a policy gateway in front of Huawei Cloud SWR's permission API.
//!
//! A request goes through [`pipeline`]: [`route`] → [`auth`] → [`ratelimit`] → [`body`] →
//! [`schema`] → [`policy`] → [`iam`] token → [`upstream`] → [`audit`]. What reloads lives in one [`snapshot`];
//! requests are served on the single-threaded runtimes of [`workers`].

pub mod admin;
pub mod audit;
pub mod auth;
pub mod body;
pub mod check;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod emulator;
pub mod error;
pub mod eval;
pub mod files;
pub mod iam;
pub mod keygen;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod redis_link;
pub mod reload;
pub mod route;
pub mod schema;
pub mod server;
pub mod snapshot;
pub mod throttle;
pub mod upstream;
pub mod workers;
