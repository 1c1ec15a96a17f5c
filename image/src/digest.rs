//! Content digests (`sha256:<64 hex>`) and layer chain IDs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
pub struct DigestError(pub String);

/// A sha256 content digest; the only algorithm registries use in practice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest(hasher.finalize().into())
    }

    /// The 64 hex characters without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Digest, DigestError> {
        let valid =
            text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut out = [0u8; 32];
        if !valid || hex::decode_to_slice(text, &mut out).is_err() {
            return Err(DigestError(text.to_string()));
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("sha256:")
            .ok_or_else(|| DigestError(s.to_string()))
            .and_then(Digest::from_hex)
            .map_err(|_| DigestError(s.to_string()))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The identity of a layer stack: `chain(L1) = diff_id(L1)`,
/// `chain(L1..Ln) = sha256(chain(L1..Ln-1) + " " + diff_id(Ln))` (OCI image spec).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChainId(pub Digest);

impl ChainId {
    pub fn chain(diff_ids: &[Digest]) -> Vec<ChainId> {
        let mut out: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let next = match out.last() {
                None => diff_id.clone(),
                Some(parent) => Digest::of(format!("{} {}", parent.0, diff_id).as_bytes()),
            };
            out.push(ChainId(next));
        }
        out
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d, Digest::of(b""));
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = ChainId::chain(&[a.clone(), b.clone()]);
        assert_eq!(chain[0].0, a);
        assert_eq!(chain[1].0, Digest::of(format!("{a} {b}").as_bytes()));
    }
}
