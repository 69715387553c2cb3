//! The hasher for maps on the per-message path: exchanges and queues by name, binding keys of
//! direct and topic exchanges, channels by number, unacknowledged deliveries by id.
//!
//! std's default SipHash resists hash flooding at several times FxHash's cost per look-up, and a
//! publish does several such look-ups. Flooding needs an attacker who picks many keys that land
//! in one bucket; here the keys are either the broker's own numbers (delivery ids, channel
//! numbers a connection may open only up to its `channel_max`) or names that authenticated
//! clients declare within their limits (queues, exchanges, bindings, subscriptions), so the worst
//! a client can do with colliding names is slow down the look-ups of entities it declared
//! itself. Maps keyed by what an anonymous peer sends keep the default hasher.

use dashmap::DashMap;
use std::collections::HashMap;

/// The build hasher of the maps described above.
pub type FastHasher = rustc_hash::FxBuildHasher;

/// A `HashMap` with [`FastHasher`].
pub type FastHashMap<K, V> = HashMap<K, V, FastHasher>;

/// A `DashMap` with [`FastHasher`].
pub type FastDashMap<K, V> = DashMap<K, V, FastHasher>;
