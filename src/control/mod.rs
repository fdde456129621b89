//! The control socket and the `mxspool queue` commands (issue 7).
