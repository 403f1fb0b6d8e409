//! echod's logger: `simple_logger` on stderr with UTC timestamps, guarded
//! so that a log reader that went away cannot kill the server.
//!
//! `simple_logger` writes with `eprintln!`, which panics when stderr is a
//! pipe whose reader has exited (`echod 2>&1 | head`, a dead log shipper);
//! the next log line (SIGUSR1, the drain) would abort the process and reset
//! every client. The guard checks stderr before each line and, once it is
//! broken, points it at `/dev/null`: echod keeps serving and drains as usual.
//! A reader that dies between the check and the write still wins that race;
//! the window is one system call wide.

use log::{LevelFilter, Log, Metadata, Record};
use simple_logger::SimpleLogger;

/// Installs the logger: `level` if given, else `RUST_LOG`, else info.
///
/// # Errors
///
/// Fails only if a logger is already installed.
pub fn init(level: Option<LevelFilter>) -> Result<(), log::SetLoggerError> {
    let logger = SimpleLogger::new()
        .with_level(LevelFilter::Info)
        .with_utc_timestamps();
    let logger = match level {
        Some(level) => logger.with_level(level),
        None => logger.env(),
    };
    log::set_max_level(logger.max_level());
    log::set_boxed_logger(Box::new(Guarded(logger)))
}

/// `SimpleLogger` behind the broken-stderr check.
struct Guarded(SimpleLogger);

impl Log for Guarded {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.0.enabled(record.metadata()) {
            return;
        }
        if crate::sys::is_stderr_broken() && crate::sys::silence_stderr().is_err() {
            // Cannot even reach /dev/null: drop the line rather than panic.
            return;
        }
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}
