//! echod: a single-threaded TCP echo service on one `mio::Poll` that drains gracefully.
#![deny(missing_docs)]

pub mod load;
pub mod sys;
