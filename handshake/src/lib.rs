//! Placeholder until the handshake issue lands.
#![forbid(unsafe_code)]
