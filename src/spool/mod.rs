//! The spool: redb schema and the spool thread.
