//! The CRI log format: `<RFC3339Nano> <stdout|stderr> <P|F> <text>\n`.
//!
//! Every chunk read from a stream becomes one record per line; a chunk that
//! does not end in a newline leaves a partial (`P`) record, completed by the
//! next chunk's first record. That is what the kubelet expects and it needs
//! no buffering beyond the read buffer.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
pub const TIMESTAMP_LEN: usize = 30;

/// Formats a UTC time as RFC 3339 with nanoseconds.
pub fn format_timestamp(secs: i64, nanos: u32) -> [u8; TIMESTAMP_LEN] {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut out[0..4], year as u64);
    put_digits(&mut out[5..7], month as u64);
    put_digits(&mut out[8..10], day as u64);
    put_digits(&mut out[11..13], (rem / 3600) as u64);
    put_digits(&mut out[14..16], (rem / 60 % 60) as u64);
    put_digits(&mut out[17..19], (rem % 60) as u64);
    put_digits(&mut out[20..29], nanos as u64);
    out
}

fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The current wall-clock time as (seconds, nanoseconds) since the epoch.
pub fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// Appends CRI records to `out` for one chunk of `stream` output.
pub fn encode_chunk(out: &mut Vec<u8>, timestamp: &[u8], stream: &[u8], chunk: &[u8]) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (line, tag, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], b"F", &rest[i + 1..]),
            None => (rest, b"P", &rest[rest.len()..]),
        };
        out.extend_from_slice(timestamp);
        out.push(b' ');
        out.extend_from_slice(stream);
        out.push(b' ');
        out.extend_from_slice(tag);
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = next;
    }
}

/// The container's log file, reopened on request (after the kubelet rotated it).
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Reused for every chunk: records are encoded here, then written at once.
    out: Vec<u8>,
}

impl LogFile {
    pub fn open(path: &Path, chunk_size: usize) -> std::io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: open_append(path)?,
            // Worst case is a chunk of newlines: one header per byte.
            out: Vec::with_capacity(chunk_size * (TIMESTAMP_LEN + 12)),
        })
    }

    pub fn write_chunk(&mut self, stream: &[u8], chunk: &[u8]) -> std::io::Result<()> {
        let (secs, nanos) = now();
        let timestamp = format_timestamp(secs, nanos);
        self.out.clear();
        encode_chunk(&mut self.out, &timestamp, stream, chunk);
        self.file.write_all(&self.out)
    }

    /// Opens the path again (creating it); the old file keeps every record
    /// written before this call. On failure the old file stays in use.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

/// Opens the log for appending as root, in a directory the kubelet manages:
/// a symlink in the last component is refused (never written through to
/// the file it names), and so is anything but a regular file. O_NONBLOCK
/// keeps the open of a FIFO from waiting for a reader; it changes nothing
/// for a regular file.
fn open_append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(&format_timestamp(0, 0), b"1970-01-01T00:00:00.000000000Z");
        // 2024-02-29T23:59:59.000000007Z: a leap day.
        assert_eq!(
            &format_timestamp(1_709_251_199, 7),
            b"2024-02-29T23:59:59.000000007Z"
        );
        assert_eq!(
            &format_timestamp(4_102_444_800, 123_456_789),
            b"2100-01-01T00:00:00.123456789Z"
        );
    }

    #[test]
    fn the_log_is_never_opened_through_a_symlink_nor_as_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("host-file");
        std::fs::write(&target, "host\n").unwrap();
        let path = dir.path().join("c.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = LogFile::open(&path, 16)
            .err()
            .expect("a symlink is refused");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        std::fs::remove_file(&path).unwrap();

        let mut log = LogFile::open(&path, 16).unwrap();
        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(log.reopen().is_err());
        // The old file stays in use.
        log.write_chunk(b"stdout", b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host\n");
        let rotated = std::fs::read_to_string(dir.path().join("c.log.1")).unwrap();
        assert!(rotated.ends_with(" stdout F after\n"), "{rotated:?}");
        std::fs::remove_file(&path).unwrap();

        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // No reader: refused at once instead of blocking.
        assert!(log.reopen().is_err());
    }

    #[test]
    fn full_lines_are_f_and_a_trailing_fragment_is_p() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"T", b"stdout", b"one\n\ntwo\nthr");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "T stdout F one\nT stdout F \nT stdout F two\nT stdout P thr\n"
        );
    }
}
