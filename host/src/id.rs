//! Random IDs and the lookup of an object by a unique prefix of its ID, as
//! crictl and the kubelet may give it.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Bound;

/// Fills `buf` from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// A new 64-character lowercase hex ID (256 random bits), the shape of pod
/// and container IDs.
pub fn random_hex_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// More than one ID starts with the prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ID prefix {prefix:?} names {count} objects")]
pub struct Ambiguous {
    pub prefix: String,
    pub count: usize,
}

/// The entry whose key is `id` or the only one that starts with it; `None`
/// when `id` is empty or nothing matches. Keys sharing a prefix are
/// adjacent in the map, so this reads only the matching range.
pub fn by_prefix<'a, K, V>(
    map: &'a BTreeMap<K, V>,
    id: &str,
) -> Result<Option<(&'a K, &'a V)>, Ambiguous>
where
    K: Borrow<str> + Ord,
{
    if id.is_empty() {
        return Ok(None);
    }
    if let Some(exact) = map.get_key_value(id) {
        return Ok(Some(exact));
    }
    let mut matches = map
        .range::<str, _>((Bound::Included(id), Bound::Unbounded))
        .take_while(|(key, _)| (*key).borrow().starts_with(id));
    let Some(first) = matches.next() else {
        return Ok(None);
    };
    match matches.count() {
        0 => Ok(Some(first)),
        others => Err(Ambiguous {
            prefix: id.to_string(),
            count: others + 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_hex_and_differ() {
        let (a, b) = (random_hex_id().unwrap(), random_hex_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn prefixes_resolve_once_or_are_ambiguous() {
        let map: BTreeMap<String, u8> = [
            ("abc1".into(), 1),
            ("abc2".into(), 2),
            ("abd".into(), 3),
            ("ab".into(), 4),
        ]
        .into();
        assert_eq!(by_prefix(&map, "abd").unwrap(), Some((&"abd".into(), &3)));
        assert_eq!(by_prefix(&map, "abc2").unwrap().map(|(_, v)| *v), Some(2));
        // The whole ID wins over the IDs it is a prefix of.
        assert_eq!(by_prefix(&map, "ab").unwrap().map(|(_, v)| *v), Some(4));
        assert_eq!(
            by_prefix(&map, "abc"),
            Err(Ambiguous {
                prefix: "abc".into(),
                count: 2
            })
        );
        assert_eq!(by_prefix(&map, "x").unwrap(), None);
        assert_eq!(by_prefix(&map, "").unwrap(), None);
    }
}
