//! Shared helpers for the proptest suites.
