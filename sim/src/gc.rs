//! The namespace controller's last step: a Terminating namespace whose content is gone is removed.
//! (Owner-reference garbage collection runs inline with each deletion, see delete.rs.)

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::meta;
use crate::store::Store;

pub async fn run(store: Arc<Store>, shutdown: CancellationToken) {
    let mut changed = store.subscribe();
    loop {
        let terminating = store.read(|s| {
            let rt = s.registry.core("namespaces");
            s.list(&rt.storage, None)
                .iter()
                .any(|n| meta::is_deleting(n))
        });
        if terminating {
            store.write(crate::delete::finish_namespaces);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    }
}
