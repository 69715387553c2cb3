//! AMQP topic matching: a trie over dot-separated words where `*` matches exactly one word and
//! `#` matches zero or more. Shared by the topic exchange and (translated) MQTT subscriptions.
//!
//! Words follow RabbitMQ: the empty key has no words, and `a..b` has three (`a`, ``, `b`).
//!
//! Matching is bounded whatever the patterns: runs of `#` are collapsed when a pattern is
//! inserted (`#.#` matches what `#` matches), and the matcher visits each (`#` node, word index)
//! state once, so a match costs at most (trie nodes × key words). Trying every split of the key
//! for each `#`, as a plain backtracking matcher does, is exponential in the number of `#`s: one
//! binding `#.#.#.#.#.#.#.#.#.z` and a 40-word key froze the broker for 26 s.

use super::hash::{FastHashMap, FastHasher};
use indexmap::IndexMap;
use std::hash::Hash;

/// The default for the most words a routing key or binding key may have (`[server]
/// topic_max_words`); MQTT's `max_topic_levels` has the same default.
pub const DEFAULT_MAX_WORDS: usize = 128;

/// Splits a routing key or pattern into words the way RabbitMQ does.
pub fn words(key: &str) -> impl Iterator<Item = &str> {
    // `"".split('.')` yields one empty word; RabbitMQ treats the empty key as zero words.
    let empty = key.is_empty();
    key.split('.').filter(move |_| !empty)
}

/// How many words [`words`] yields, without splitting.
pub fn word_count(key: &str) -> usize {
    if key.is_empty() {
        0
    } else {
        key.bytes().filter(|&b| b == b'.').count() + 1
    }
}

/// The words of a pattern with each run of `#` collapsed into one: the trie's path for it.
fn pattern_words(pattern: &str) -> impl Iterator<Item = &str> {
    let mut previous_hash = false;
    words(pattern).filter(move |&w| {
        let hash = w == "#";
        let keep = !(hash && previous_hash);
        previous_hash = hash;
        keep
    })
}

#[derive(Debug)]
struct Node<T> {
    children: FastHashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    /// Values bound with a pattern that ends at this node, each with how many times it was
    /// inserted (patterns that collapse to the same path share an entry). A map, so that adding
    /// or removing one of N destinations bound with the same pattern does not scan the N.
    values: IndexMap<T, u32, FastHasher>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: FastHashMap::default(),
            star: None,
            hash: None,
            values: IndexMap::default(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    /// A `#` with nothing after it: it matches the rest of any key.
    fn is_leaf(&self) -> bool {
        self.children.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

/// A set of (pattern, value) pairs that can be matched against routing keys.
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Hash + Eq> TopicTrie<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct (pattern, value) pairs, patterns compared after collapsing `#` runs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern`; false if that pair was already present (it is then counted
    /// once more, and stays until removed as many times).
    pub fn insert(&mut self, pattern: &str, value: T) -> bool {
        let mut node = &mut self.root;
        for word in pattern_words(pattern) {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.children.entry(w.into()).or_default(),
            };
        }
        let count = node.values.entry(value).or_insert(0);
        *count += 1;
        let added = *count == 1;
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes one insertion of the pair; false if it was not present. The pair stops matching
    /// when its last insertion is removed; empty branches are then pruned.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let path: Vec<&str> = pattern_words(pattern).collect();
        let Some(gone) = Self::remove_at(&mut self.root, &path, value) else {
            return false;
        };
        if gone {
            self.len -= 1;
        }
        true
    }

    /// None: not present; Some(true): its last insertion was removed.
    fn remove_at(node: &mut Node<T>, path: &[&str], value: &T) -> Option<bool> {
        let Some((&word, rest)) = path.split_first() else {
            let count = node.values.get_mut(value)?;
            *count -= 1;
            let gone = *count == 0;
            if gone {
                node.values.swap_remove(value);
            }
            return Some(gone);
        };
        match word {
            "*" | "#" => {
                let slot = if word == "*" {
                    &mut node.star
                } else {
                    &mut node.hash
                };
                let child = slot.as_deref_mut()?;
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    *slot = None;
                }
                removed
            }
            w => {
                let child = node.children.get_mut(w)?;
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    node.children.remove(w);
                }
                removed
            }
        }
    }

    /// Calls `f` for every value whose pattern matches `key`, once per matching pattern (a value
    /// bound under several matching patterns is reported once for each; callers de-duplicate
    /// destinations).
    pub fn for_each_match<'a>(&'a self, key: &str, mut f: impl FnMut(&'a T)) {
        // Routing keys are short; a small stack buffer of word slices avoids an allocation for
        // the common case.
        let mut buf: smallvec_lite::WordBuf<'_> = smallvec_lite::WordBuf::new();
        for w in words(key) {
            buf.push(w);
        }
        let mut matcher = Matcher {
            words: buf.as_slice(),
            hash_visits: HashVisits::default(),
            f: &mut f,
        };
        matcher.walk(&self.root, 0);
    }
}

/// One match in progress.
struct Matcher<'k, T, F> {
    words: &'k [&'k str],
    hash_visits: HashVisits<T>,
    f: &'k mut F,
}

impl<'a, T: 'a, F: FnMut(&'a T)> Matcher<'_, T, F> {
    /// Matches the words from `at` on against the patterns below `node`. A non-`#` node is
    /// reached with a given `at` at most once: its path from the nearest `#` above it (or the
    /// root) is fixed, so `at` fixes where that `#` stopped, and each such `#` state is visited
    /// once (see [`Matcher::walk_hash`]).
    fn walk(&mut self, node: &'a Node<T>, at: usize) {
        if let Some(hash) = &node.hash {
            self.walk_hash(hash, at);
        }
        match self.words.get(at) {
            None => node.values.keys().for_each(&mut *self.f),
            Some(word) => {
                if let Some(child) = node.children.get(*word) {
                    self.walk(child, at + 1);
                }
                if let Some(star) = &node.star {
                    self.walk(star, at + 1);
                }
            }
        }
    }

    /// `#` at `hash`, reached with the words from `at` on left: it consumes `at..k` for each
    /// `k`. The states (`hash`, k) for k from the lowest `at` seen so far on were visited already,
    /// so only those below it are walked.
    fn walk_hash(&mut self, hash: &'a Node<T>, at: usize) {
        let unvisited_until = self.hash_visits.lowest(hash, at).unwrap_or(usize::MAX);
        let end = unvisited_until.min(self.words.len() + 1);
        if at >= end {
            return;
        }
        if hash.is_leaf() {
            // Matches whatever is left: only the state that consumes the whole key reports.
            if end > self.words.len() {
                hash.values.keys().for_each(&mut *self.f);
            }
            return;
        }
        for k in at..end {
            self.walk(hash, k);
        }
    }
}

const HASH_VISITS_INLINE: usize = 8;

/// The lowest word index each `#` node was reached with during one match. A few inline
/// entries cover ordinary keys without allocating; a map takes over past them.
struct HashVisits<T> {
    inline: [(*const Node<T>, usize); HASH_VISITS_INLINE],
    len: usize,
    spill: FastHashMap<*const Node<T>, usize>,
}

impl<T> Default for HashVisits<T> {
    fn default() -> Self {
        HashVisits {
            inline: [(std::ptr::null(), 0); HASH_VISITS_INLINE],
            len: 0,
            spill: FastHashMap::default(),
        }
    }
}

impl<T> HashVisits<T> {
    /// Records that `node` was reached with `at`; returns the lowest index it had been reached
    /// with before (None: never), and keeps the lower of the two.
    fn lowest(&mut self, node: &Node<T>, at: usize) -> Option<usize> {
        let ptr: *const Node<T> = node;
        let slot = match self.inline[..self.len].iter_mut().find(|(p, _)| *p == ptr) {
            Some((_, lowest)) => lowest,
            None if self.len < HASH_VISITS_INLINE && self.spill.is_empty() => {
                self.inline[self.len] = (ptr, at);
                self.len += 1;
                return None;
            }
            None => match self.spill.entry(ptr) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(at);
                    return None;
                }
            },
        };
        let before = *slot;
        *slot = before.min(at);
        Some(before)
    }
}

/// A tiny inline buffer of word slices (no new dependency for one use).
mod smallvec_lite {
    const INLINE: usize = 16;

    pub struct WordBuf<'a> {
        inline: [&'a str; INLINE],
        len: usize,
        spill: Vec<&'a str>,
    }

    impl<'a> WordBuf<'a> {
        pub fn new() -> Self {
            WordBuf {
                inline: [""; INLINE],
                len: 0,
                spill: Vec::new(),
            }
        }

        pub fn push(&mut self, w: &'a str) {
            if self.len < INLINE && self.spill.is_empty() {
                self.inline[self.len] = w;
                self.len += 1;
            } else {
                if self.spill.is_empty() {
                    self.spill.extend_from_slice(&self.inline[..self.len]);
                }
                self.spill.push(w);
            }
        }

        pub fn as_slice(&self) -> &[&'a str] {
            if self.spill.is_empty() {
                &self.inline[..self.len]
            } else {
                &self.spill
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut t = TopicTrie::new();
        t.insert(pattern, 1u32);
        let mut hit = false;
        t.for_each_match(key, |_| hit = true);
        hit
    }

    #[test]
    fn tutorial_examples() {
        assert!(matches("*.orange.*", "quick.orange.rabbit"));
        assert!(matches("*.*.rabbit", "quick.orange.rabbit"));
        assert!(matches("lazy.#", "lazy.orange.elephant"));
        assert!(!matches("*.orange.*", "quick.brown.fox"));
        assert!(!matches("*.orange.*", "quick.orange.male.rabbit"));
        assert!(matches("lazy.#", "lazy.orange.male.rabbit"));
        assert!(!matches("*.orange.*", "orange"));
        assert!(matches("lazy.#", "lazy"));
    }

    #[test]
    fn hash_alone_and_empty_words() {
        assert!(matches("#", ""));
        assert!(matches("#", "a.b.c"));
        assert!(!matches("*", ""));
        assert!(matches("*", "a"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("a..b", "a..b"));
        assert!(matches("a.*.b", "a..b"));
        assert!(!matches("a.b", "a..b"));
        assert!(matches("a.#.b", "a.b"));
        assert!(matches("a.#.b", "a.x.y.b"));
        assert!(matches("#.b", "b"));
        assert!(matches("a.#", "a."));
        assert!(matches("#.#", "a"));
        assert!(matches("*.#", "a"));
        assert!(!matches("*.*.#", "a"));
    }

    #[test]
    fn insert_remove_prunes_and_counts() {
        let mut t = TopicTrie::new();
        assert!(t.insert("a.*.c", 1));
        assert!(!t.insert("a.*.c", 1), "second insertion of the pair");
        assert!(t.insert("a.*.c", 2));
        assert!(t.insert("a.#", 1));
        assert_eq!(t.len(), 3);
        assert!(t.remove("a.*.c", &1));
        let mut got = vec![];
        t.for_each_match("a.b.c", |v| got.push(*v));
        got.sort();
        assert_eq!(
            got,
            vec![1, 1, 2],
            "inserted twice: still there after one removal"
        );
        assert!(t.remove("a.*.c", &1));
        assert!(!t.remove("a.*.c", &1));
        let mut got = vec![];
        t.for_each_match("a.b.c", |v| got.push(*v));
        got.sort();
        assert_eq!(got, vec![1, 2]);
        assert!(t.remove("a.*.c", &2));
        assert!(t.remove("a.#", &1));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "all branches pruned");
    }

    #[test]
    fn runs_of_hash_collapse_into_one_pattern() {
        let mut t = TopicTrie::new();
        assert!(t.insert("a.#.#.#", 1));
        assert!(!t.insert("a.#", 1), "the same pattern once collapsed");
        assert_eq!(t.len(), 1);
        let mut n = 0;
        t.for_each_match("a.b.c", |_| n += 1);
        assert_eq!(n, 1, "reported once, not once per `#`");
        assert!(t.remove("a.#.#", &1));
        let mut n = 0;
        t.for_each_match("a", |_| n += 1);
        assert_eq!(n, 1, "the other binding keeps it");
        assert!(t.remove("a.#", &1));
        assert!(t.root.is_empty());
    }

    #[test]
    fn pathological_patterns_match_in_bounded_time() {
        // Exponential for a backtracking matcher: 20 `#` (also interleaved with words, so they
        // do not collapse) against a 128-word key.
        let mut t = TopicTrie::new();
        t.insert(&["#"; 20].join("."), 0);
        t.insert(&format!("{}.z", ["#"; 20].join(".")), 1);
        t.insert(&format!("{}.z", ["#.a"; 20].join(".")), 2);
        t.insert(&format!("{}.#.z", ["*.#"; 20].join(".")), 3);
        let key = vec!["a"; 128].join(".");
        let mut got = vec![];
        t.for_each_match(&key, |v| got.push(*v));
        assert_eq!(got, vec![0]);
        let key_z = format!("{key}.z");
        let mut got = vec![];
        t.for_each_match(&key_z, |v| got.push(*v));
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn long_keys_spill_past_inline_buffer() {
        let key = (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(".");
        assert!(matches("0.#.39", &key));
        assert!(!matches("0.#.38", &key));
    }

    proptest::proptest! {
        #[test]
        fn trie_agrees_with_reference_matcher(
            pattern in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "", "*", "#"]), 0..6),
            key in proptest::collection::vec(proptest::sample::select(vec!["a", "b", ""]), 0..6),
        ) {
            let pattern = pattern.join(".");
            let key = key.join(".");
            let p: Vec<&str> = words(&pattern).collect();
            let k: Vec<&str> = words(&key).collect();
            proptest::prop_assert_eq!(matches(&pattern, &key), reference(&p, &k));
        }

        /// Many patterns heavy in `#` in one trie (sharing nodes), long keys: each value whose
        /// pattern matches is reported exactly once, and no other.
        #[test]
        fn shared_trie_reports_each_matching_pattern_once(
            patterns in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*", "#", "#"]), 0..10),
                1..12,
            ),
            key in proptest::collection::vec(proptest::sample::select(vec!["a", "b"]), 0..24),
        ) {
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            let key = key.join(".");
            let mut t = TopicTrie::new();
            for (i, p) in patterns.iter().enumerate() {
                t.insert(p, i);
            }
            let mut got = vec![];
            t.for_each_match(&key, |v| got.push(*v));
            got.sort();
            let k: Vec<&str> = words(&key).collect();
            let want: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| reference(&words(p).collect::<Vec<_>>(), &k))
                .map(|(i, _)| i)
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// Straightforward recursive matcher used as the oracle.
    fn reference(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| reference(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && reference(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && reference(rest, &k[1..]),
        }
    }
}
