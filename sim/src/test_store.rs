//! Test support: a store seeded like a fresh cluster, for unit tests of the sim's own controllers.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::registry::Registry;
use crate::store::{Obj, Store};
use crate::write::{self, WriteOptions};

/// A store with the built-in kinds and the `default` namespace.
pub fn new_store() -> Arc<Store> {
    let store = Arc::new(Store::new(Registry::with_builtins()));
    store.write(|inner| {
        let ns = inner.registry.core("namespaces");
        write::create(
            inner,
            &ns,
            "",
            json!({"metadata": {"name": "default"}}),
            &WriteOptions::default(),
        )
        .unwrap();
    });
    store
}

/// Creates a built-in object through the API's write path.
pub fn create(store: &Store, plural: &str, ns: &str, obj: Value) -> Obj {
    store.write(|inner| {
        let rt = inner.registry.core(plural);
        write::create(inner, &rt, ns, obj, &WriteOptions::default()).unwrap()
    })
}
