//! The audit ledger (see `docs/ledger-format.md`).
