//! Integration tests, one binary: the HTTP framing table (desync-guardian
//! cases and SECURITY.md's list) and black-box tests of a running proxy.

mod admin;
mod audit;
mod auth;
mod desync;
mod harness;
mod layout;
mod listfilter;
mod policy;
mod proxy;
mod reload;
mod store;
mod vault;
