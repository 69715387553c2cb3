//! AMQP topic matching: a trie over dot-separated words where `*` matches exactly one word and
//! `#` matches zero or more. Shared by the topic exchange and (translated) MQTT subscriptions.
//!
//! Words follow RabbitMQ: the empty key has no words, and `a..b` has three (`a`, ``, `b`).

use super::hash::FastHashMap;

/// Splits a routing key or pattern into words the way RabbitMQ does.
pub fn words(key: &str) -> impl Iterator<Item = &str> {
    // `"".split('.')` yields one empty word; RabbitMQ treats the empty key as zero words.
    let empty = key.is_empty();
    key.split('.').filter(move |_| !empty)
}

#[derive(Debug)]
struct Node<T> {
    children: FastHashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    /// Values bound with a pattern that ends at this node.
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: FastHashMap::default(),
            star: None,
            hash: None,
            values: Vec::new(),
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
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq> TopicTrie<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern`; false if that exact pair is already present.
    pub fn insert(&mut self, pattern: &str, value: T) -> bool {
        let mut node = &mut self.root;
        for word in words(pattern) {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.children.entry(w.into()).or_default(),
            };
        }
        if node.values.contains(&value) {
            return false;
        }
        node.values.push(value);
        self.len += 1;
        true
    }

    /// Removes the pair; false if it was not present. Empty branches are pruned.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let path: Vec<&str> = words(pattern).collect();
        let removed = Self::remove_at(&mut self.root, &path, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<T>, path: &[&str], value: &T) -> bool {
        let Some((&word, rest)) = path.split_first() else {
            let before = node.values.len();
            node.values.retain(|v| v != value);
            return node.values.len() != before;
        };
        match word {
            "*" | "#" => {
                let slot = if word == "*" {
                    &mut node.star
                } else {
                    &mut node.hash
                };
                let Some(child) = slot.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    *slot = None;
                }
                removed
            }
            w => {
                let Some(child) = node.children.get_mut(w) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    node.children.remove(w);
                }
                removed
            }
        }
    }

    /// Calls `f` for every value whose pattern matches `key`. A value bound under several
    /// matching patterns is reported once per pattern; callers de-duplicate destinations.
    pub fn for_each_match<'a>(&'a self, key: &str, mut f: impl FnMut(&'a T)) {
        // Routing keys are short; a small stack buffer of word slices avoids an allocation for
        // the common case.
        let mut buf: smallvec_lite::WordBuf<'_> = smallvec_lite::WordBuf::new();
        for w in words(key) {
            buf.push(w);
        }
        Self::walk(&self.root, buf.as_slice(), &mut f);
    }

    fn walk<'a>(node: &'a Node<T>, words: &[&str], f: &mut impl FnMut(&'a T)) {
        if let Some(hash) = &node.hash {
            // `#` consumes zero or more words: try every split.
            for skip in 0..=words.len() {
                Self::walk(hash, &words[skip..], f);
            }
        }
        let Some((first, rest)) = words.split_first() else {
            node.values.iter().for_each(&mut *f);
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::walk(child, rest, f);
        }
        if let Some(star) = &node.star {
            Self::walk(star, rest, f);
        }
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
    fn insert_remove_prunes_and_dedupes() {
        let mut t = TopicTrie::new();
        assert!(t.insert("a.*.c", 1));
        assert!(!t.insert("a.*.c", 1));
        assert!(t.insert("a.*.c", 2));
        assert!(t.insert("a.#", 1));
        assert_eq!(t.len(), 3);
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
