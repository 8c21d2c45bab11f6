//! The services wakegate runs right now, by name: those of the config, and those created from
//! a template at run time (added and removed while the API reads it). A std `RwLock`, held
//! only to copy or change the list, never across an await.

use std::sync::{Arc, RwLock};

use super::ServiceHandle;

/// A cloneable, shared list of the running services.
#[derive(Clone, Default)]
pub struct Registry(Arc<RwLock<Vec<ServiceHandle>>>);

impl Registry {
    pub fn new(services: Vec<ServiceHandle>) -> Registry {
        Registry(Arc::new(RwLock::new(services)))
    }

    /// Every service, in the order they were added.
    pub fn all(&self) -> Vec<ServiceHandle> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self, name: &str) -> Option<ServiceHandle> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.name() == name)
            .cloned()
    }

    /// Adds a service; false (and nothing added) when one of that name is there already.
    pub fn add(&self, service: ServiceHandle) -> bool {
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        if all.iter().any(|s| s.name() == service.name()) {
            return false;
        }
        all.push(service);
        true
    }

    /// Removes a service; false when none had that name.
    pub fn remove(&self, name: &str) -> bool {
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        let before = all.len();
        all.retain(|s| s.name() != name);
        all.len() != before
    }
}
