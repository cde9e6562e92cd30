//! Migrations of older layouts, run on open.

use super::*;

/// Remove the indexes of layout 1 (`o` order keys, `f` in-flight keys), in chunks. Records
/// that layout 1 marked `in_flight` (taken when the process stopped) become `queued` again;
/// their pending keys kept their place.
pub(super) fn migrate_to_2(tree: &::sled::Tree) -> Result<(), StoreError> {
    let mut requeued = ::sled::Batch::default();
    for item in tree.scan_prefix([b'f']) {
        let (k, _) = item?;
        let id = uuid_from(&k[1..])?;
        if let Some(v) = tree.get(event_key(&id))? {
            let mut rec: EventRecord = from_json(&v)?;
            if rec.state == EventState::InFlight {
                rec.state = EventState::Queued;
                requeued.insert(event_key(&id), to_json(&rec));
            }
        }
    }
    tree.apply_batch(requeued)?;
    for prefix in [b'o', b'f'] {
        loop {
            let keys: Vec<::sled::IVec> = tree
                .scan_prefix([prefix])
                .keys()
                .take(10_000)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let mut b = ::sled::Batch::default();
            for k in keys {
                b.remove(k);
            }
            tree.apply_batch(b)?;
        }
    }
    Ok(())
}
