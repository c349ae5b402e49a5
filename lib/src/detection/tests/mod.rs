//! Engine tests: unit tests of whole queries over an in-memory provider,
//! the hostile corpus, and the differential test against SQLite.

mod differential;
mod engine;
mod grammar;
mod hostile;
mod interest;
mod prefilter;
