//! The DNS resolver (issue 3).
