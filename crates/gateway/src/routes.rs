//! The routing table: path prefixes to services, longest prefix first. Built whole and
//! swapped atomically, so a request always sees one consistent table.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tessera_manifest::RoutePrefix;
use tessera_runtime::Service;

/// An immutable routing table.
#[derive(Clone, Default)]
pub struct RouteTable {
    /// Sorted by prefix length, longest first, so the first match is the longest.
    entries: Vec<(RoutePrefix, Service)>,
}

impl RouteTable {
    /// Builds a table; when two entries share a prefix the later one wins (the manifest
    /// has already refused such conflicts, so this only matters to programmatic callers).
    pub fn new(entries: impl IntoIterator<Item = (RoutePrefix, Service)>) -> Self {
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.reverse();
        // A stable sort keeps later duplicates first among equals.
        entries.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.as_str().len()));
        entries.dedup_by(|b, a| a.0 == b.0);
        RouteTable { entries }
    }

    /// The service answering `path` (a request path without query), if any.
    pub fn route(&self, path: &str) -> Option<&Service> {
        self.entries
            .iter()
            .find(|(prefix, _)| prefix.matches(path))
            .map(|(_, service)| service)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&RoutePrefix, &Service)> {
        self.entries.iter().map(|(p, s)| (p, s))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A shared, swappable handle to the current routing table. Swapping never blocks or
/// fails requests: those in flight finish with the table they started with.
#[derive(Clone, Default)]
pub struct Routes(Arc<ArcSwap<RouteTable>>);

impl Routes {
    pub fn new(table: RouteTable) -> Self {
        Routes(Arc::new(ArcSwap::from_pointee(table)))
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    pub fn swap(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}
