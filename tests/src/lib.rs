//! # kim-tests
//!
//! Integration tests that span crates: today the protocol's public test vectors as seen by an
//! outside user of `kim-protocol`; the multi-node harness joins when nodes replicate.
