//! SPDY/3 header blocks: the name/value encoding and its zlib compression
//! with the protocol's preset dictionary. Each direction of a session is one
//! zlib stream; every block ends with a sync flush so the peer can inflate it
//! on its own.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::FrameError;

/// Decompressed header blocks larger than this are refused (a zip bomb
/// would otherwise cost memory without bound).
pub const MAX_HEADER_BLOCK: usize = 256 << 10;

/// Header blocks with more pairs are refused: the Kubernetes protocols send
/// a handful, and every pair costs two allocations.
pub const MAX_HEADER_PAIRS: usize = 256;

/// Header names of the dictionary, each stored with a 4-byte length prefix.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's unprefixed tail.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 zlib dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        let mut out = Vec::with_capacity(1423);
        for word in DICTIONARY_WORDS {
            out.extend_from_slice(&(word.len() as u32).to_be_bytes());
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        out
    })
}

/// A header block: (lowercase name, value) pairs in order. A value holding
/// several values separates them with NUL, as on the wire.
pub type HeaderBlock = Vec<(String, String)>;

/// Encodes `headers` uncompressed (counts and lengths are 32-bit).
pub fn encode_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Decodes an uncompressed block, checking every length against the data.
pub fn decode_block(mut data: &[u8]) -> Result<HeaderBlock, FrameError> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if data.len() < n {
            return Err(FrameError::Headers("header block truncated".into()));
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Ok(head)
    }
    fn len(data: &mut &[u8]) -> Result<usize, FrameError> {
        let b = take(data, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let count = len(&mut data)?;
    // Each pair takes at least 8 bytes: a count beyond that is a lie.
    if count > data.len() / 8 {
        return Err(FrameError::Headers(format!(
            "header block claims {count} pairs in {} bytes",
            data.len()
        )));
    }
    if count > MAX_HEADER_PAIRS {
        return Err(FrameError::Headers(format!(
            "header block has {count} pairs, more than {MAX_HEADER_PAIRS}"
        )));
    }
    let mut out = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    for _ in 0..count {
        let n = len(&mut data)?;
        let name = take(&mut data, n)?;
        let n = len(&mut data)?;
        let value = take(&mut data, n)?;
        if name.is_empty() {
            return Err(FrameError::Headers("empty header name".into()));
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| FrameError::Headers("header name is not UTF-8".into()))?;
        if name.bytes().any(|b| b.is_ascii_uppercase() || b == 0) {
            return Err(FrameError::Headers(format!(
                "header name {name:?} is not lowercase"
            )));
        }
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| FrameError::Headers(format!("header {name:?}: value is not UTF-8")))?;
        if !seen.insert(name) {
            return Err(FrameError::Headers(format!("duplicate header {name:?}")));
        }
        out.push((name.to_string(), value));
    }
    if !data.is_empty() {
        return Err(FrameError::Headers(format!(
            "{} bytes after the header block",
            data.len()
        )));
    }
    Ok(out)
}

/// The sending side's zlib stream.
pub struct HeaderEncoder {
    zlib: Compress,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(dictionary())
            .expect("zlib accepts a dictionary before any data");
        HeaderEncoder { zlib }
    }
}

impl HeaderEncoder {
    /// Encodes and compresses one block (sync-flushed).
    pub fn encode(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        let plain = encode_block(headers);
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        let mut input = &plain[..];
        loop {
            out.reserve(plain.len() / 2 + 64);
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer cannot fail");
            input = &input[(self.zlib.total_in() - before) as usize..];
            // Done once all input is in and the flush left spare room.
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// The receiving side's zlib stream.
pub struct HeaderDecoder {
    zlib: Decompress,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        HeaderDecoder {
            zlib: Decompress::new(true),
        }
    }
}

impl HeaderDecoder {
    /// Inflates one block and decodes it.
    pub fn decode(&mut self, compressed: &[u8]) -> Result<HeaderBlock, FrameError> {
        let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut input = compressed;
        loop {
            if out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::Headers(format!(
                    "header block larger than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            out.reserve(4096);
            let before = self.zlib.total_in();
            let result = self
                .zlib
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.zlib.total_in() - before) as usize..];
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::Headers("zlib stream ended".into()));
                }
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                }
                Err(err) if err.needs_dictionary().is_some() => {
                    self.zlib.set_dictionary(dictionary()).map_err(|err| {
                        FrameError::Headers(format!("zlib dictionary refused: {err}"))
                    })?;
                }
                Err(err) => return Err(FrameError::Headers(format!("zlib: {err}"))),
            }
        }
        decode_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_has_the_spdy3_size_and_layout() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        assert_eq!(&dict[..11], b"\0\0\0\x07options");
        assert!(dict.ends_with(b",enq=0."));
    }

    #[test]
    fn blocks_compress_with_the_dictionary_and_round_trip_on_one_stream() {
        let mut enc = HeaderEncoder::default();
        let mut dec = HeaderDecoder::default();
        let first: HeaderBlock = vec![
            ("streamtype".into(), "stdout".into()),
            ("content-type".into(), "text/plain".into()),
        ];
        let second: HeaderBlock = vec![("streamtype".into(), "stderr".into())];
        let a = enc.encode(&first);
        let b = enc.encode(&second);
        // The first block names the dictionary (FDICT set in the zlib header).
        assert_eq!(a[0], 0x78);
        assert_ne!(a[1] & 0x20, 0);
        assert_eq!(dec.decode(&a).unwrap(), first);
        assert_eq!(dec.decode(&b).unwrap(), second);
    }

    #[test]
    fn dictionary_words_compress_better_than_without_it() {
        let headers: HeaderBlock = vec![
            ("content-type".into(), "text/html".into()),
            ("accept-encoding".into(), "gzip,deflate,sdch".into()),
        ];
        let with = HeaderEncoder::default().encode(&headers);
        let mut plain = Compress::new(Compression::default(), true);
        let mut without = Vec::with_capacity(1024);
        plain
            .compress_vec(&encode_block(&headers), &mut without, FlushCompress::Sync)
            .unwrap();
        assert!(with.len() < without.len(), "{with:?} vs {without:?}");
    }

    #[test]
    fn bad_blocks_are_errors() {
        assert!(decode_block(&[0, 0, 0]).is_err());
        assert!(decode_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        let upper = encode_block(&[("Host".into(), "x".into())]);
        assert!(decode_block(&upper).is_err());
        let dup = encode_block(&[("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert!(decode_block(&dup).is_err());
        let empty = encode_block(&[(String::new(), "1".into())]);
        assert!(decode_block(&empty).is_err());
        assert!(HeaderDecoder::default().decode(b"not zlib at all").is_err());
    }

    /// Distinct 4-letter names filling a block just under the size cap.
    fn many_distinct_names() -> HeaderBlock {
        let per_pair = 4 + 4 + 4;
        let count = (MAX_HEADER_BLOCK - 4) / per_pair;
        (0..count)
            .map(|i| {
                let name: String = (0..4)
                    .map(|d| (b'a' + (i / 26usize.pow(d) % 26) as u8) as char)
                    .collect();
                (name, String::new())
            })
            .collect()
    }

    #[test]
    fn a_block_of_many_distinct_names_is_refused_quickly() {
        let block = many_distinct_names();
        assert!(block.len() > 20_000);
        let packed = HeaderEncoder::default().encode(&block);
        let started = std::time::Instant::now();
        let got = HeaderDecoder::default().decode(&packed);
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
        let err = got.unwrap_err().to_string();
        assert!(err.contains("pairs"), "{err}");
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let big: HeaderBlock = vec![("x".into(), "a".repeat(MAX_HEADER_BLOCK * 2))];
        let packed = HeaderEncoder::default().encode(&big);
        assert!(packed.len() < MAX_HEADER_BLOCK / 16);
        assert!(HeaderDecoder::default().decode(&packed).is_err());
    }
}
