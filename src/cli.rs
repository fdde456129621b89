//! The command line (CONTRACT.md "Command line"): parses the arguments and
//! dispatches to the module that does the work. Exit codes: 0 success, 1
//! runtime failure, 2 bad usage or configuration.

pub fn main(args: Vec<String>) -> i32 {
    let _ = args;
    2
}
