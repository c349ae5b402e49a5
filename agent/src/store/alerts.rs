//! The alert file (`<store>.alerts.redb`, beside the store): alerts, their
//! outbox and the operator's rule choices — the agent's own state, which
//! no ledger can rebuild.
//!
//! Tables (values are protobuf):
//! - `alerts`: alert id -> `Alert`; `alert_order`: (alert_time_ms, id) -> ().
//! - `alert_outbox`: (sink name, alert id) -> (), written with the alert and
//!   removed once that sink has it (see `sinks`).
//! - `rules_state`: rule id -> enabled, the operator's `rules enable|disable`
//!   choices, applied over every loaded rule set (see `api_rules`).
//!
//! *Why a file of its own:* a new alert is committed durably (the outbox
//! must hold it before any sink sees it). In the store's file that fsync
//! also wrote back every page the relaxed commits of derived state had
//! dirtied since the last durable one, and redb's commit bookkeeping grows
//! with the file: at 40 alerts/s the alert commits were a quarter of the
//! agent's CPU. Here a durable commit writes the few pages of the alerts
//! themselves. The store's derived state stays relaxed (the ledger rebuilds
//! it); delivered-outbox removals and repeat counts are relaxed here (a
//! crash repeats a delivery, at least once, or forgets a count).
//!
//! *Alerts of streaming rules are relaxed too*, because the ledger rebuilds
//! them as well: they follow from events, and the store's durable
//! `last_applied_seq` never passes an event whose alerts are not durable
//! here (the store writer makes this file durable first, see
//! [`Store::write_pending`]). After a crash the agent re-applies the
//! events after that seq and raises their lost alerts again, with the same
//! ids (see `alerts`). An alert is therefore committed here before any sink
//! sees it, and survives an agent crash, without an fsync on the way from
//! exec to sink. Alerts of table rules (no event behind them) are committed
//! durably.

use std::path::{Path, PathBuf};

use daemoneye_lib::proto::Alert;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::{Ctx, Store, StoreError, decode_at};

const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
const ALERT_ORDER: TableDefinition<(i64, &str), ()> = TableDefinition::new("alert_order");
/// (sink name, alert id) -> (): alerts not yet delivered to that sink.
const OUTBOX: TableDefinition<(&str, &str), ()> = TableDefinition::new("alert_outbox");
/// rule id -> enabled (operator overrides of the rule files' `enabled`).
const RULES_STATE: TableDefinition<&str, bool> = TableDefinition::new("rules_state");

/// Page cache of the alert file: it is small and read rarely.
const CACHE_BYTES: usize = 4 << 20;

/// The open alert file.
#[derive(Debug)]
pub(super) struct AlertDb {
    db: Database,
    path: PathBuf,
}

impl AlertDb {
    /// The alert file of the store at `store_path`.
    pub(super) fn path_for(store_path: &Path) -> PathBuf {
        store_path.with_extension("alerts.redb")
    }

    /// Opens (or creates) the alert file and its tables.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).ctx(path, "opening")?;
        let txn = db.begin_write().ctx(path, "starting a transaction")?;
        txn.open_table(ALERTS).ctx(path, "creating tables")?;
        txn.open_table(ALERT_ORDER).ctx(path, "creating tables")?;
        txn.open_table(OUTBOX).ctx(path, "creating tables")?;
        txn.open_table(RULES_STATE).ctx(path, "creating tables")?;
        txn.commit().ctx(path, "committing")?;
        Ok(Self { db, path: path.to_owned() })
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves alerts, outbox and rule choices that a store of schema 1 kept
    /// in its own file into this one (copied durably first, then dropped
    /// from the store: a crash in between copies them again, which changes
    /// nothing).
    pub(super) fn migrate_from(&self, store: &Database, store_path: &Path) -> Result<bool, StoreError> {
        let names: Vec<String> = {
            let r = store.begin_read().ctx(store_path, "starting a read")?;
            let tables = r.list_tables().ctx(store_path, "listing tables")?;
            tables.map(|t| t.name().to_owned()).collect()
        };
        let old = [ALERTS.name(), ALERT_ORDER.name(), OUTBOX.name(), RULES_STATE.name()];
        if !names.iter().any(|n| old.contains(&n.as_str())) {
            return Ok(false);
        }
        let r = store.begin_read().ctx(store_path, "starting a read")?;
        let w = self.db.begin_write().ctx(&self.path, "starting a transaction")?;
        let present = |name: &str| names.iter().any(|n| n == name);
        if present(ALERTS.name()) {
            copy_table(&r, &w, ALERTS, store_path, &self.path)?;
        }
        if present(ALERT_ORDER.name()) {
            copy_table(&r, &w, ALERT_ORDER, store_path, &self.path)?;
        }
        if present(OUTBOX.name()) {
            copy_table(&r, &w, OUTBOX, store_path, &self.path)?;
        }
        if present(RULES_STATE.name()) {
            copy_table(&r, &w, RULES_STATE, store_path, &self.path)?;
        }
        w.commit().ctx(&self.path, "committing the moved alerts")?;
        drop(r);
        let w = store.begin_write().ctx(store_path, "starting a transaction")?;
        w.delete_table(ALERTS).ctx(store_path, "dropping a moved table")?;
        w.delete_table(ALERT_ORDER).ctx(store_path, "dropping a moved table")?;
        w.delete_table(OUTBOX).ctx(store_path, "dropping a moved table")?;
        w.delete_table(RULES_STATE).ctx(store_path, "dropping a moved table")?;
        w.commit().ctx(store_path, "committing")?;
        Ok(true)
    }

    /// Makes every earlier relaxed commit durable.
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().ctx(&self.path, "starting a transaction")?;
        txn.commit().ctx(&self.path, "committing")
    }
}

impl Store {
    /// Replaces an alert (a repeat's occurrence count; relaxed, see
    /// [`Store::put_alerts`]).
    pub fn put_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        self.put_alerts(&[], std::slice::from_ref(alert), &[])
    }

    /// In one transaction: the `new` alerts, each with one outbox entry per
    /// sink (after a crash every sink still finds them), and the `updated`
    /// ones (occurrence counts of repeats). Durable when a new alert has no
    /// event behind it (a table rule's: nothing else could rebuild it);
    /// relaxed otherwise: an event's alerts are rebuilt from the ledger
    /// (see the module docs), and a crash may forget the last repeats'
    /// counts.
    pub fn put_alerts(&self, new: &[Alert], updated: &[Alert], sinks: &[String]) -> Result<(), StoreError> {
        if new.is_empty() && updated.is_empty() {
            return Ok(());
        }
        let p = &self.alerts.path;
        let mut txn = self.alerts.db.begin_write().ctx(p, "starting a transaction")?;
        if new.iter().all(|a| a.event_seq.is_some()) {
            txn.set_durability(redb::Durability::None).ctx(p, "relaxing durability")?;
        }
        {
            let mut alerts = txn.open_table(ALERTS).ctx(p, "opening alerts")?;
            let mut order = txn.open_table(ALERT_ORDER).ctx(p, "opening alerts")?;
            let mut outbox = txn.open_table(OUTBOX).ctx(p, "opening alert_outbox")?;
            for alert in new.iter().chain(updated) {
                alerts.insert(alert.id.as_str(), alert.encode_to_vec().as_slice()).ctx(p, "writing an alert")?;
                order.insert((alert.alert_time_ms, alert.id.as_str()), ()).ctx(p, "writing an alert")?;
            }
            for alert in new {
                for sink in sinks {
                    outbox.insert((sink.as_str(), alert.id.as_str()), ()).ctx(p, "writing alert_outbox")?;
                }
            }
        }
        txn.commit().ctx(p, "committing alerts")?;
        Ok(())
    }

    /// Inserts an alert and, in the same transaction, one outbox entry per
    /// sink: after a crash every sink still finds it.
    pub fn put_alert_for_delivery(&self, alert: &Alert, sinks: &[String]) -> Result<(), StoreError> {
        self.put_alerts(std::slice::from_ref(alert), &[], sinks)
    }

    /// The alerts still to deliver to `sink`, oldest id (UUIDv7: oldest
    /// alert) first, as they stand now (occurrence counts included).
    pub fn outbox(&self, sink: &str) -> Result<Vec<Alert>, StoreError> {
        let txn = self.alerts.db.begin_read().ctx(&self.alerts.path, "starting a read")?;
        let outbox = txn.open_table(OUTBOX).ctx(&self.alerts.path, "opening alert_outbox")?;
        let alerts = txn.open_table(ALERTS).ctx(&self.alerts.path, "opening alerts")?;
        let mut out = Vec::new();
        for item in outbox.range((sink, "")..).ctx(&self.alerts.path, "reading alert_outbox")? {
            let (k, _) = item.ctx(&self.alerts.path, "reading alert_outbox")?;
            let (s, id) = k.value();
            if s != sink {
                break;
            }
            if let Some(v) = alerts.get(id).ctx(&self.alerts.path, "reading alerts")? {
                out.push(decode_at(&self.alerts.path, "alerts", id, v.value())?);
            }
        }
        Ok(out)
    }

    /// Whether `alert_id` still waits for `sink`.
    pub fn outbox_contains(&self, sink: &str, alert_id: &str) -> Result<bool, StoreError> {
        let txn = self.alerts.db.begin_read().ctx(&self.alerts.path, "starting a read")?;
        let outbox = txn.open_table(OUTBOX).ctx(&self.alerts.path, "opening alert_outbox")?;
        Ok(outbox.get((sink, alert_id)).ctx(&self.alerts.path, "reading alert_outbox")?.is_some())
    }

    /// Marks `alert_ids` delivered to `sink`, in one transaction.
    pub fn outbox_remove(&self, sink: &str, alert_ids: &[String]) -> Result<(), StoreError> {
        let p = &self.alerts.path;
        // Lost in a crash, a delivery is repeated: at least once, by id.
        let mut txn = self.alerts.db.begin_write().ctx(p, "starting a transaction")?;
        txn.set_durability(redb::Durability::None).ctx(p, "relaxing durability")?;
        {
            let mut outbox = txn.open_table(OUTBOX).ctx(p, "opening alert_outbox")?;
            for id in alert_ids {
                outbox.remove((sink, id.as_str())).ctx(p, "removing from alert_outbox")?;
            }
        }
        txn.commit().ctx(p, "committing a delivery")?;
        Ok(())
    }

    /// Alerts, oldest first.
    pub fn alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let txn = self.alerts.db.begin_read().ctx(&self.alerts.path, "starting a read")?;
        let order = txn.open_table(ALERT_ORDER).ctx(&self.alerts.path, "opening alerts")?;
        let alerts = txn.open_table(ALERTS).ctx(&self.alerts.path, "opening alerts")?;
        let mut out = Vec::new();
        for item in order.iter().ctx(&self.alerts.path, "reading alerts")? {
            let (k, _) = item.ctx(&self.alerts.path, "reading alerts")?;
            let (_, id) = k.value();
            if let Some(v) = alerts.get(id).ctx(&self.alerts.path, "reading alerts")? {
                out.push(decode_at(&self.alerts.path, "alerts", id, v.value())?);
            }
        }
        Ok(out)
    }

    /// The operator's rule overrides: rule id -> enabled.
    pub fn rule_overrides(&self) -> Result<std::collections::HashMap<String, bool>, StoreError> {
        let txn = self.alerts.db.begin_read().ctx(&self.alerts.path, "starting a read")?;
        let table = txn.open_table(RULES_STATE).ctx(&self.alerts.path, "opening rules_state")?;
        let mut out = std::collections::HashMap::new();
        for item in table.iter().ctx(&self.alerts.path, "reading rules_state")? {
            let (k, v) = item.ctx(&self.alerts.path, "reading rules_state")?;
            out.insert(k.value().to_owned(), v.value());
        }
        Ok(out)
    }

    /// Records (or with `None` forgets) the operator's choice for a rule.
    pub fn set_rule_override(&self, rule_id: &str, enabled: Option<bool>) -> Result<(), StoreError> {
        let p = &self.alerts.path;
        let txn = self.alerts.db.begin_write().ctx(p, "starting a transaction")?;
        {
            let mut table = txn.open_table(RULES_STATE).ctx(p, "opening rules_state")?;
            match enabled {
                Some(e) => table.insert(rule_id, e).map(|_| ()).ctx(p, "writing rules_state")?,
                None => table.remove(rule_id).map(|_| ()).ctx(p, "writing rules_state")?,
            }
        }
        txn.commit().ctx(p, "committing rules_state")?;
        Ok(())
    }
}

/// Copies every entry of `table` from the read transaction of `from_path`
/// into the write transaction of `to_path`.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
    from_path: &Path,
    to_path: &Path,
) -> Result<(), StoreError> {
    let mut out = to.open_table(table).ctx(to_path, "opening a moved table")?;
    let entries = from.open_table(table).ctx(from_path, "opening a table to move")?;
    for item in entries.iter().ctx(from_path, "reading a table to move")? {
        let (k, v) = item.ctx(from_path, "reading a table to move")?;
        out.insert(k.value(), v.value()).ctx(to_path, "writing a moved table")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_entries_are_per_sink_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let sinks = vec!["a".to_string(), "b".to_string()];
        {
            let store = Store::open(&path).unwrap();
            for id in ["01", "02", "03"] {
                store.put_alert_for_delivery(&Alert { id: id.into(), ..Default::default() }, &sinks).unwrap();
            }
            store.outbox_remove("a", &["01".to_string(), "03".to_string()]).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let ids = |s: &str| store.outbox(s).unwrap().into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(ids("a"), vec!["02"]);
        assert_eq!(ids("b"), vec!["01", "02", "03"]);
        assert!(ids("c").is_empty());
        assert!(store.outbox_contains("b", "01").unwrap());
        assert!(!store.outbox_contains("a", "01").unwrap());
    }

    #[test]
    fn rule_overrides_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store.set_rule_override("a", Some(false)).unwrap();
            store.set_rule_override("b", Some(true)).unwrap();
            store.set_rule_override("b", None).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let o = store.rule_overrides().unwrap();
        assert_eq!(o.get("a"), Some(&false));
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn alerts_round_trip_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        for (id, t) in [("x", 5), ("y", 1)] {
            store.put_alert(&Alert { id: id.into(), alert_time_ms: t, ..Default::default() }).unwrap();
        }
        let ids: Vec<_> = store.alerts().unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, vec!["y", "x"]);
    }

    /// A store of schema 1 kept alerts, outbox and rule choices in its own
    /// file: they move to the alert file on open, once.
    #[test]
    fn alerts_move_out_of_a_schema_1_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let alert = Alert { id: "01".into(), alert_time_ms: 7, ..Default::default() };
                w.open_table(ALERTS).unwrap().insert("01", alert.encode_to_vec().as_slice()).unwrap();
                w.open_table(ALERT_ORDER).unwrap().insert((7, "01"), ()).unwrap();
                w.open_table(OUTBOX).unwrap().insert(("stdout", "01"), ()).unwrap();
                w.open_table(RULES_STATE).unwrap().insert("r", false).unwrap();
                w.open_table(super::super::META).unwrap().insert("schema_version", 1).unwrap();
            }
            w.commit().unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.alerts().unwrap().iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["01"]);
            assert!(store.outbox_contains("stdout", "01").unwrap());
            assert_eq!(store.rule_overrides().unwrap().get("r"), Some(&false));
        }
        assert!(dir.path().join("store.alerts.redb").exists());
        let db = Database::create(&path).unwrap();
        let r = db.begin_read().unwrap();
        let names: Vec<String> = r.list_tables().unwrap().map(|t| t.name().to_owned()).collect();
        assert!(!names.iter().any(|n| n == "alerts" || n == "alert_outbox" || n == "rules_state"), "{names:?}");
    }
}
