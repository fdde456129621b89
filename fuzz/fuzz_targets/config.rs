//! The UCI parser and the typed configuration model on arbitrary text.
//! Invariants: no panic; an error names a line that exists (or 0 for
//! errors about the file as a whole).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = mxspool::config::uci::parse(&text);
    if let Err(e) = mxspool::config::Config::parse(&text, Path::new("/nonexistent/fuzz.conf")) {
        let lines = text.lines().count();
        assert!(
            e.line <= lines + 1,
            "error on line {} of {lines}: {}",
            e.line,
            e.message
        );
    }
});
