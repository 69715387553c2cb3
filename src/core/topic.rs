//! AMQP topic matching: a trie over dot-separated words where `*` matches exactly one word and
//! `#` matches zero or more. Shared by the topic exchange and (translated) MQTT subscriptions.
//!
//! Words follow RabbitMQ: the empty key has no words, and `a..b` has three (`a`, ``, `b`).
//!
//! Matching is bounded whatever the patterns: runs of `#` are collapsed when a pattern is
//! inserted (`#.#` matches what `#` matches), and the matcher visits each trie node once, with
//! the set of key positions it is reached at as a bit set, so a match costs at most (trie nodes
//! × key words / 64) word operations and a look-up per (node, position). Trying every split of
//! the key for each `#`, as a plain backtracking matcher does, is exponential in the number of
//! `#`s: one binding `#.#.#.#.#.#.#.#.#.z` and a 40-word key froze the broker for 26 s.

use super::hash::{FastHashMap, FastHasher};
use indexmap::IndexMap;
use std::hash::Hash;

/// The default for the most words a routing key or binding key may have (`[server]
/// topic_max_words`); MQTT's `max_topic_levels` has the same default.
pub const DEFAULT_MAX_WORDS: usize = 128;

/// Splits a routing key or pattern into words the way RabbitMQ does.
pub fn words(key: &str) -> impl Iterator<Item = &str> {
    // RabbitMQ treats the empty key as zero words (where `"".split('.')` yields one).
    let mut rest = (!key.is_empty()).then_some(key);
    std::iter::from_fn(move || {
        let (word, after) = first_word(rest?);
        rest = after;
        Some(word)
    })
}

/// The first word of `rest` (a key from one of its words on) and the key after it, None when
/// it was the last. A byte scan: `.` is ASCII, so it is never inside a multi-byte char, and
/// `str::split` over a char sets a searcher up for every word.
fn first_word(rest: &str) -> (&str, Option<&str>) {
    match rest.bytes().position(|b| b == b'.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    }
}

/// How many words [`words`] yields, without splitting.
pub fn word_count(key: &str) -> usize {
    if key.is_empty() {
        0
    } else {
        key.bytes().filter(|&b| b == b'.').count() + 1
    }
}

/// Whether `key` has more than `max` words, counting them only when it is long enough to:
/// a key of n bytes has at most n + 1 words.
pub fn more_words_than(key: &str, max: usize) -> bool {
    key.len() >= max && word_count(key) > max
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
}

/// A set of (pattern, value) pairs that can be matched against routing keys.
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
    /// Pairs whose pattern has a `#`: while there are none the trie has no `#` node, and a
    /// key is matched word by word as it is read, without the position sets `#` needs.
    with_hash: usize,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
            with_hash: 0,
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
            self.with_hash += usize::from(has_hash(pattern));
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
            self.with_hash -= usize::from(has_hash(pattern));
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
        if self.with_hash == 0 {
            return walk_plain(&self.root, (!key.is_empty()).then_some(key), &mut f);
        }
        // Routing keys are short; a small stack buffer of word slices avoids an allocation for
        // the common case.
        let mut buf: smallvec_lite::WordBuf<'_> = smallvec_lite::WordBuf::new();
        for w in words(key) {
            buf.push(w);
        }
        Matcher::new(buf.as_slice(), &mut f).walk_one(&self.root, 0);
    }
}

/// Whether a pattern has a `#` word.
fn has_hash(pattern: &str) -> bool {
    words(pattern).any(|w| w == "#")
}

/// Matching in a trie without `#` nodes: each node is reached with one position, so the key's
/// words are taken one at a time from `rest` (the key from the next word on, None when every
/// word is consumed) instead of being split up front.
fn walk_plain<'a, T>(node: &'a Node<T>, rest: Option<&str>, f: &mut impl FnMut(&'a T)) {
    let Some(rest) = rest else {
        node.values.keys().for_each(f);
        return;
    };
    let (word, after) = first_word(rest);
    if let Some(child) = node.children.get(word) {
        walk_plain(child, after, f);
    }
    if let Some(star) = &node.star {
        walk_plain(star, after, f);
    }
}

/// One match in progress.
///
/// A node is reached with a set of positions in the key (how many words the path to it has
/// consumed). The trie is a tree, so each node is visited at most once, with the union of its
/// positions: a path with no `#` above it has one position (the plain recursive walk, no sets);
/// below a `#` the positions are a bit set, and each step (a word, `*`, `#`) is a few
/// operations on it. A match costs at most (trie nodes × key words / 64) set operations plus one
/// look-up per (node, position) where a node has more children than positions, whatever the
/// patterns.
struct Matcher<'k, T, F> {
    words: &'k [&'k str],
    /// u64 blocks in a set of positions `0..=words.len()`.
    blocks: usize,
    /// For each distinct word of the key, the positions just after it; made on first use.
    after: Option<FastHashMap<&'k str, Positions>>,
    f: &'k mut F,
    reports: std::marker::PhantomData<fn(&T)>,
}

impl<'a, 'k, T: 'a, F: FnMut(&'a T)> Matcher<'k, T, F> {
    fn new(words: &'k [&'k str], f: &'k mut F) -> Self {
        Matcher {
            words,
            blocks: words.len() / 64 + 1,
            after: None,
            f,
            reports: std::marker::PhantomData,
        }
    }

    /// `node` reached with `at` words consumed, and no other position.
    fn walk_one(&mut self, node: &'a Node<T>, at: usize) {
        if let Some(hash) = &node.hash {
            let from = self.from(at);
            self.walk_set(hash, from);
        }
        match self.words.get(at) {
            None => node.values.keys().for_each(&mut *self.f),
            Some(word) => {
                if let Some(child) = node.children.get(*word) {
                    self.walk_one(child, at + 1);
                }
                if let Some(star) = &node.star {
                    self.walk_one(star, at + 1);
                }
            }
        }
    }

    /// `node` reached with each position in `at` (not empty).
    fn walk_set(&mut self, node: &'a Node<T>, at: Positions) {
        if let Some(only) = at.single() {
            return self.walk_one(node, only);
        }
        let n = self.words.len();
        if at.contains(n) {
            node.values.keys().for_each(&mut *self.f);
        }
        if let (Some(hash), Some(lowest)) = (&node.hash, at.lowest()) {
            let from = self.from(lowest);
            self.walk_set(hash, from);
        }
        // One more word consumed from each position but the end.
        let next = at.shifted(n);
        if next.is_empty() {
            return;
        }
        if let Some(star) = &node.star {
            self.walk_set(star, next.clone());
        }
        if node.children.is_empty() {
            return;
        }
        if node.children.len() <= next.count() {
            for (word, child) in &node.children {
                let after = self.after(word);
                let reached = next.and(after);
                if !reached.is_empty() {
                    self.walk_set(child, reached);
                }
            }
        } else if next.count() <= FEW_POSITIONS {
            // Fewer positions than children: look each position's word up, once per distinct
            // word (the same word leads to the same child), without allocating.
            let positions = || at.iter().filter(|&p| p < n);
            for p in positions() {
                let word = self.words[p];
                if positions()
                    .take_while(|&q| q < p)
                    .any(|q| self.words[q] == word)
                {
                    continue;
                }
                let Some(child) = node.children.get(word) else {
                    continue;
                };
                let mut set = Positions::empty(self.blocks);
                for q in positions().filter(|&q| self.words[q] == word) {
                    set.insert(q + 1);
                }
                self.walk_set(child, set);
            }
        } else {
            let mut reached: Vec<(&'a Node<T>, Positions)> = Vec::new();
            for p in at.iter().filter(|&p| p < n) {
                let Some(child) = node.children.get(self.words[p]) else {
                    continue;
                };
                match reached.iter_mut().find(|(c, _)| std::ptr::eq(*c, child)) {
                    Some((_, set)) => set.insert(p + 1),
                    None => {
                        let mut set = Positions::empty(self.blocks);
                        set.insert(p + 1);
                        reached.push((child, set));
                    }
                }
            }
            for (child, set) in reached {
                self.walk_set(child, set);
            }
        }
    }

    /// Every position from `at` to the end of the key (what a `#` reached at `at` covers).
    fn from(&self, at: usize) -> Positions {
        let mut set = Positions::empty(self.blocks);
        let end = self.words.len() + 1;
        for (i, b) in set.blocks_mut().iter_mut().enumerate() {
            let (lo, hi) = (i * 64, i * 64 + 64);
            if hi <= at || lo >= end {
                continue;
            }
            let below_at = if at > lo { (1u64 << (at - lo)) - 1 } else { 0 };
            let below_end = if end < hi {
                (1u64 << (end - lo)) - 1
            } else {
                u64::MAX
            };
            *b = below_end & !below_at;
        }
        set
    }

    /// The positions just after each occurrence of `word` in the key.
    fn after(&mut self, word: &str) -> &Positions {
        let (words, blocks) = (self.words, self.blocks);
        let after = self.after.get_or_insert_with(|| {
            let mut m: FastHashMap<&'k str, Positions> = FastHashMap::default();
            for (p, w) in words.iter().enumerate() {
                m.entry(*w)
                    .or_insert_with(|| Positions::empty(blocks))
                    .insert(p + 1);
            }
            m
        });
        static NONE: Positions = Positions::none();
        after.get(word).unwrap_or(&NONE)
    }
}

/// Up to this many positions, the children of a node reached at several are found without
/// allocating (comparing the positions' words with each other).
const FEW_POSITIONS: usize = 8;

/// Blocks of a position set kept inline: keys of up to 191 words (the default limit is 128).
const INLINE_BLOCKS: usize = 3;

/// A set of positions in a key, `0..=words`, as bits.
#[derive(Clone, Debug)]
struct Positions {
    inline: [u64; INLINE_BLOCKS],
    /// Used instead of `inline` for longer keys.
    heap: Vec<u64>,
}

impl Positions {
    const fn none() -> Self {
        Positions {
            inline: [0; INLINE_BLOCKS],
            heap: Vec::new(),
        }
    }

    fn empty(blocks: usize) -> Self {
        let mut set = Self::none();
        if blocks > INLINE_BLOCKS {
            set.heap = vec![0; blocks];
        }
        set
    }

    fn blocks(&self) -> &[u64] {
        if self.heap.is_empty() {
            &self.inline
        } else {
            &self.heap
        }
    }

    fn blocks_mut(&mut self) -> &mut [u64] {
        if self.heap.is_empty() {
            &mut self.inline
        } else {
            &mut self.heap
        }
    }

    fn insert(&mut self, p: usize) {
        if let Some(b) = self.blocks_mut().get_mut(p / 64) {
            *b |= 1 << (p % 64);
        }
    }

    fn contains(&self, p: usize) -> bool {
        self.blocks()
            .get(p / 64)
            .is_some_and(|b| b & (1 << (p % 64)) != 0)
    }

    fn is_empty(&self) -> bool {
        self.blocks().iter().all(|&b| b == 0)
    }

    fn count(&self) -> usize {
        self.blocks().iter().map(|b| b.count_ones() as usize).sum()
    }

    fn lowest(&self) -> Option<usize> {
        let (i, b) = self.blocks().iter().enumerate().find(|(_, &b)| b != 0)?;
        Some(i * 64 + b.trailing_zeros() as usize)
    }

    /// The position when there is exactly one.
    fn single(&self) -> Option<usize> {
        if self.count() == 1 {
            self.lowest()
        } else {
            None
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.blocks().iter().enumerate().flat_map(|(i, &b)| {
            let mut bits = b;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    i * 64 + bit
                })
            })
        })
    }

    /// Each position but `end` moved one word on.
    fn shifted(&self, end: usize) -> Positions {
        let mut out = self.clone();
        let blocks = out.blocks_mut();
        let mut carry = 0;
        for b in blocks.iter_mut() {
            let next_carry = *b >> 63;
            *b = (*b << 1) | carry;
            carry = next_carry;
        }
        // Nothing goes past the end: drop the bit `end` moved to.
        if let Some(b) = blocks.get_mut((end + 1) / 64) {
            *b &= !(1 << ((end + 1) % 64));
        }
        out
    }

    fn and(&self, other: &Positions) -> Positions {
        let mut out = self.clone();
        let theirs = other.blocks();
        for (i, b) in out.blocks_mut().iter_mut().enumerate() {
            *b &= theirs.get(i).copied().unwrap_or(0);
        }
        out
    }
}

/// A tiny inline buffer of word slices (no new dependency for one use).
mod smallvec_lite {
    const INLINE: usize = 16;

    pub(super) struct WordBuf<'a> {
        inline: [&'a str; INLINE],
        len: usize,
        spill: Vec<&'a str>,
    }

    impl<'a> WordBuf<'a> {
        pub(super) fn new() -> Self {
            WordBuf {
                inline: [""; INLINE],
                len: 0,
                spill: Vec::new(),
            }
        }

        pub(super) fn push(&mut self, w: &'a str) {
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

        pub(super) fn as_slice(&self) -> &[&'a str] {
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
    fn words_split_as_rabbitmq_does() {
        let split = |k| words(k).collect::<Vec<_>>();
        assert!(split("").is_empty());
        assert_eq!(split("a"), ["a"]);
        assert_eq!(split("a..b"), ["a", "", "b"]);
        assert_eq!(split("a."), ["a", ""]);
        assert_eq!(split("."), ["", ""]);
        assert_eq!(split("é.ü.日本"), ["é", "ü", "日本"]);
        for k in ["", "a", "a..b", "a.", ".", "é.ü.日本", ".x.y."] {
            assert_eq!(word_count(k), split(k).len(), "{k:?}");
            for max in 0..8 {
                assert_eq!(more_words_than(k, max), split(k).len() > max, "{k:?} {max}");
            }
        }
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
            let (got, want) = trie_against(&patterns, &key.join("."), reference);
            proptest::prop_assert_eq!(got, want);
        }

        /// Keys past 64 and 128 words (position sets of several blocks), and a `#` node with
        /// more children than positions (the look-up-per-position branch), against a
        /// dynamic-programming reference.
        #[test]
        fn long_keys_and_wide_nodes_agree_with_the_reference(
            patterns in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c3", "*", "#"]), 0..8),
                1..8,
            ),
            key in proptest::collection::vec(
                proptest::sample::select(vec!["a", "b", "a", "b", "a", "b", "c3", "d1"]),
                60..200,
            ),
        ) {
            let mut patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            // `#.c3` is reached after each (rare) `c3`: fewer positions than its 40 children.
            patterns.extend((0..40).map(|i| format!("#.c3.d{i}")));
            patterns.extend((0..40).map(|i| format!("#.c3.d{i}.#")));
            let (got, want) = trie_against(&patterns, &key.join("."), reference_dp);
            proptest::prop_assert_eq!(got, want);
        }
    }

    proptest::proptest! {
        /// Tries without a `#` pattern are matched word by word as the key is read; the same
        /// trie once a `#` pattern came and went is matched that way again.
        #[test]
        fn tries_without_hash_agree_with_the_reference(
            patterns in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!["a", "b", "", "*"]), 0..6),
                1..12,
            ),
            key in proptest::collection::vec(proptest::sample::select(vec!["a", "b", ""]), 0..8),
        ) {
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
            let key = key.join(".");
            let (got, want) = trie_against(&patterns, &key, reference);
            proptest::prop_assert_eq!(&got, &want);
            let mut t = TopicTrie::new();
            for (i, p) in patterns.iter().enumerate() {
                t.insert(p, i);
            }
            proptest::prop_assert_eq!(t.with_hash, 0);
            t.insert("a.#", usize::MAX);
            t.insert("a.#.#", usize::MAX);
            proptest::prop_assert_eq!(t.with_hash, 1, "collapsed to one pair");
            t.remove("a.#", &usize::MAX);
            t.remove("a.#.#", &usize::MAX);
            proptest::prop_assert_eq!(t.with_hash, 0);
            let mut again = vec![];
            t.for_each_match(&key, |v| again.push(*v));
            again.sort();
            proptest::prop_assert_eq!(again, want);
        }
    }

    /// The indexes of `patterns` that one trie holding them all reports for `key`, sorted, and
    /// those that `reference` says match.
    fn trie_against(
        patterns: &[String],
        key: &str,
        reference: fn(&[&str], &[&str]) -> bool,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut t = TopicTrie::new();
        for (i, p) in patterns.iter().enumerate() {
            t.insert(p, i);
        }
        let mut got = vec![];
        t.for_each_match(key, |v| got.push(*v));
        got.sort();
        let k: Vec<&str> = words(key).collect();
        let want = patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| reference(&words(p).collect::<Vec<_>>(), &k))
            .map(|(i, _)| i)
            .collect();
        (got, want)
    }

    /// `reference` without its exponential backtracking: `m[i][j]` says whether pattern words
    /// from `i` on match key words from `j` on.
    fn reference_dp(p: &[&str], k: &[&str]) -> bool {
        let mut m = vec![vec![false; k.len() + 1]; p.len() + 1];
        m[p.len()][k.len()] = true;
        for i in (0..p.len()).rev() {
            for j in (0..=k.len()).rev() {
                m[i][j] = match p[i] {
                    "#" => m[i + 1][j] || (j < k.len() && m[i][j + 1]),
                    "*" => j < k.len() && m[i + 1][j + 1],
                    w => j < k.len() && k[j] == w && m[i + 1][j + 1],
                };
            }
        }
        m[0][0]
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
