//! echo-load library half.
