//! Paths of the guest components built from `functions/` for the tests.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
