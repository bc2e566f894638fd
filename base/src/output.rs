//! A command's output on stdout, through [`out!`](crate::out) and [`outln!`](crate::outln)
//! instead of `print!`/`println!`.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`cafe crds | head -1`). A
//! closed pipe means the reader wants no more, so the process ends there, quietly, with exit 0.
//! Restoring the default SIGPIPE action would do the same for stdout but would also kill the
//! process when a network peer closes a socket mid-write (tokio writes sockets without
//! `MSG_NOSIGNAL`), and `cafe hub`, `cafe dev` and `cafe sim` are servers and clients.

use std::io::{self, Write};

/// Writes `text` to stdout and flushes it. A closed pipe exits the process with 0; any other
/// write error (a full disk behind a redirect) is reported on stderr and exits with 1.
pub fn print(text: std::fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    if let Err(err) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        std::process::exit(exit_code(&err, &mut io::stderr()));
    }
}

/// What a failed write to stdout ends the process with: 0 for a closed pipe (nothing said),
/// else 1 with the cause written to `stderr` (itself allowed to fail: there is no one left to
/// tell).
pub fn exit_code(err: &io::Error, stderr: &mut dyn Write) -> i32 {
    if err.kind() == io::ErrorKind::BrokenPipe {
        return 0;
    }
    let _ = writeln!(stderr, "error: writing to stdout: {err}");
    1
}

/// Writes one line to stderr, ignoring a closed stderr (`eprintln!` would panic on it).
pub fn error_line(text: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// `print!` that exits quietly on a closed pipe (see [`crate::output`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}

/// `println!` that exits quietly on a closed pipe (see [`crate::output`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_a_quiet_success_and_anything_else_a_reported_failure() {
        let mut said = Vec::new();
        let closed = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(exit_code(&closed, &mut said), 0);
        assert!(said.is_empty(), "nothing said on a closed pipe");

        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(exit_code(&full, &mut said), 1);
        let said = String::from_utf8(said).unwrap();
        assert!(said.starts_with("error: writing to stdout: "), "{said}");
    }
}
