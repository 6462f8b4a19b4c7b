//! An output file appended to in whole aligned blocks with O_DIRECT (Linux), where the filesystem allows it: the
//! device reads the bytes from this process's memory, so the kernel copies nothing into the page cache (on a
//! virtual machine that copy is most of what writing a replay's output costs: docs/performance.md). The bytes are
//! gathered in an aligned buffer (or formatted straight into it: `append_with`), written a whole number of blocks
//! at a time, and the last partial block is written without O_DIRECT when the file is finished. A filesystem that
//! refuses O_DIRECT (when the file is opened, or at its first write) gets ordinary buffered writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The alignment and the unit of an O_DIRECT write: a page, a multiple of every logical block size in use.
const BLOCK: usize = 4096;
/// At most this many bytes are gathered at once (a large append, e.g. accounts.json, goes in pieces: the buffer
/// stays small).
const PIECE: usize = 4 << 20;

#[derive(Debug)]
pub struct Appender {
    pub path: PathBuf,
    file: File,
    direct: bool,
    /// bytes not yet written, at `storage[start..]`, `start` aligned to BLOCK in memory
    storage: Vec<u8>,
    start: usize,
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> io::Result<File> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

impl Appender {
    /// Create (or truncate) the file, with O_DIRECT when the filesystem takes it.
    pub fn create(path: PathBuf) -> io::Result<Appender> {
        match open_direct(&path) {
            Ok(file) => Ok(Appender { path, file, direct: true, storage: Vec::new(), start: 0 }),
            Err(_) => {
                let file = File::create(&path)?;
                Ok(Appender::buffered(path, file))
            }
        }
    }

    /// Ordinary writes to a file opened already.
    pub fn buffered(path: PathBuf, file: File) -> Appender {
        Appender { path, file, direct: false, storage: Vec::new(), start: 0 }
    }

    /// Whether the blocks go to the device without the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        for piece in bytes.chunks(PIECE) {
            self.append_with(|pending| pending.extend_from_slice(piece))?;
        }
        Ok(())
    }

    /// Append what `fill` writes to the end of the buffer it is lent, in place: the bytes are written from where
    /// they were formatted, not copied there first (the output writer formats the postings so). Whole blocks are
    /// written at once.
    pub fn append_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        if !self.direct {
            self.storage.clear();
            fill(&mut self.storage);
            return self.file.write_all(&self.storage);
        }
        if self.storage.capacity() == 0 {
            self.realign();
        }
        let before = self.storage.as_ptr();
        fill(&mut self.storage);
        if self.storage.as_ptr() != before {
            self.realign(); // grown elsewhere in memory: the pending bytes aligned again (rare: it keeps its size)
        }
        self.write_blocks()
    }

    /// Write the pending whole blocks; the rest moves to the front.
    fn write_blocks(&mut self) -> io::Result<()> {
        let whole = (self.storage.len() - self.start) / BLOCK * BLOCK;
        if whole == 0 {
            return Ok(());
        }
        let at = self.file.stream_position()?;
        match self.file.write_all(&self.storage[self.start..self.start + whole]) {
            Ok(()) => {
                self.storage.copy_within(self.start + whole.., self.start);
                self.storage.truncate(self.storage.len() - whole);
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::InvalidInput => self.fall_back(at),
            Err(error) => Err(error),
        }
    }

    /// Write what is left (the last partial block) and flush.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.direct && self.storage.len() > self.start {
            let mut tail = OpenOptions::new().append(true).open(&self.path)?;
            tail.write_all(&self.storage[self.start..])?;
            self.storage.truncate(self.start);
        }
        self.file.flush()
    }

    /// The pending bytes moved into storage of their own whose window starts on a block (unless theirs does).
    fn realign(&mut self) {
        let pending = &self.storage[self.start.min(self.storage.len())..];
        if self.storage.capacity() > 0 && self.storage.as_ptr().wrapping_add(self.start).align_offset(BLOCK) == 0 {
            return;
        }
        let mut storage: Vec<u8> = Vec::with_capacity(2 * pending.len() + 2 * BLOCK);
        let start = storage.as_ptr().align_offset(BLOCK);
        storage.resize(start, 0);
        storage.extend_from_slice(pending);
        (self.storage, self.start) = (storage, start);
    }

    /// The filesystem refused an O_DIRECT write (EINVAL) begun at `at`: the pending bytes it did not take, and
    /// every later write, through an ordinary descriptor from where the file had got to.
    fn fall_back(&mut self, at: u64) -> io::Result<()> {
        let reached = self.file.stream_position()?;
        let pending = &self.storage[self.start..];
        let done = usize::try_from(reached.saturating_sub(at)).unwrap_or(usize::MAX).min(pending.len());
        let mut file = OpenOptions::new().write(true).open(&self.path)?;
        file.seek(SeekFrom::Start(reached))?;
        file.write_all(&pending[done..])?;
        (self.file, self.direct, self.storage, self.start) = (file, false, Vec::new(), 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_pieces_of_any_size_make_the_file() {
        let path = std::env::temp_dir().join(format!("backstop-appender-{}", std::process::id()));
        let mut appender = Appender::create(path.clone()).unwrap();
        let mut expected = Vec::new();
        let mut state = 7u64;
        for round in 0..200 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let size = if round == 100 { 2 * PIECE + 5 } else { (state >> 40) as usize % (3 * BLOCK) };
            let piece: Vec<u8> = (0..size).map(|i| b'a' + ((i + expected.len()) % 26) as u8).collect();
            appender.append(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        assert!(appender.storage.capacity() <= 4 * (PIECE + BLOCK), "the buffer stays small");
        appender.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_refused_direct_write_falls_back_to_ordinary_writes() {
        let path = std::env::temp_dir().join(format!("backstop-appender-refused-{}", std::process::id()));
        let mut appender = Appender::create(path.clone()).unwrap();
        if !appender.is_direct() {
            std::fs::remove_file(path).unwrap();
            return; // this filesystem takes no O_DIRECT: nothing to fall back from
        }
        let first = vec![b'x'; BLOCK];
        appender.append(&first).unwrap();
        // storage out of alignment by a byte, and room enough that it stays there: the device refuses the next
        // block (EINVAL), as a filesystem might
        let mut storage: Vec<u8> = Vec::with_capacity(8 * BLOCK);
        appender.start = storage.as_ptr().align_offset(BLOCK) + 1;
        storage.resize(appender.start, 0);
        appender.storage = storage;
        let second: Vec<u8> = (0..BLOCK + 100).map(|i| b'a' + (i % 26) as u8).collect();
        appender.append_with(|pending| pending.extend_from_slice(&second)).unwrap();
        assert!(!appender.is_direct());
        appender.append(b"tail").unwrap();
        appender.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [first.as_slice(), &second, b"tail"].concat());
        std::fs::remove_file(path).unwrap();
    }
}
