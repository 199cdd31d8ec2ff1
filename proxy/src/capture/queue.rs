//! The durable on-disk queue of the `mirror` replication driver: an append-only sequence of
//! records, written by many tasks through one [`Writer`] and read back in order by one
//! [`Reader`] (the applier), kept across restarts.
//!
//! # Files
//!
//! A queue is identified by a directory and a generation number (`gen`, a `u64`). Its
//! records live in segment files named `q-<gen:016x>-<firstseq:016x>.seg` (lower-case hex),
//! where `firstseq` is the seq of the segment's first record. The writer appends to the
//! segment with the highest `firstseq` (the *current* segment) and starts a new one before
//! an append that would take the current one past its size limit ([`SEGMENT_BYTES`] by
//! default), unless the current one holds no record yet. A new segment is written as
//! `<name>.tmp`, synced and renamed into place, so a segment file always has a whole
//! header; leftover `.tmp` files are removed by [`Writer::open`].
//!
//! Each segment starts with a 32-byte header (all integers little-endian):
//!
//! | offset | size | field                                                              |
//! |-------:|-----:|--------------------------------------------------------------------|
//! |      0 |    4 | magic `PGSQ`                                                       |
//! |      4 |    4 | format version (`u32`, currently 1)                                |
//! |      8 |    8 | generation (`u64`)                                                 |
//! |     16 |    8 | seq of the segment's first record (`u64`, same as in the name)     |
//! |     24 |    8 | base position: the queue's byte position at the segment's start    |
//!
//! followed by records, back to back:
//!
//! | size | field                                                                    |
//! |-----:|--------------------------------------------------------------------------|
//! |    4 | `u32` length in bytes of kind + seq + payload (that is, 9 + payload)     |
//! |    4 | `u32` CRC-32 (IEEE, as `crc32fast`) of those same bytes                  |
//! |    1 | kind (`u8`, opaque to the queue)                                         |
//! |    8 | seq (`u64`)                                                              |
//! |    n | payload (at most [`MAX_PAYLOAD`] bytes)                                  |
//!
//! Seqs start at 1 and are consecutive across segments.
//!
//! # Positions
//!
//! The *position* of the queue is the number of record bytes (17 + payload per record,
//! headers excluded) appended since the queue was created, purged segments included. The
//! base position stored in every segment header makes it survive restarts and purges, so it
//! is a monotonic byte counter suitable for a lag in bytes ([`Writer::position`] minus
//! [`Reader::position`]).
//!
//! # Durability
//!
//! [`Writer::append`] returns once the bytes have been handed to the kernel with `write(2)`:
//! a record whose append returned survives a crash of the process (kill -9), not
//! necessarily a crash of the host; [`Writer::sync`] (`fdatasync`) makes everything
//! appended before it durable. Starting a new segment syncs the previous one and the
//! directory. [`Writer::open`] validates every record of the generation and cuts a torn or
//! corrupt tail of the last segment (the remains of an append interrupted by a crash).
//!
//! Only one [`Writer`] may exist for a given directory and generation at a time, across
//! processes too; readers, [`purge`] and [`generations`] may run concurrently with it.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Default size limit of a segment file, in bytes (64 MiB), header included. A segment is
/// closed before an append that would take it past the limit, unless it holds no record
/// yet (a single record larger than the limit gets a segment of its own).
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Largest payload of a record, in bytes (1 GiB). Larger payloads are refused with
/// [`io::ErrorKind::InvalidInput`].
pub const MAX_PAYLOAD: usize = 1 << 30;

const MAGIC: &[u8; 4] = b"PGSQ";
const VERSION: u32 = 1;
/// Size of a segment header, in bytes.
const HEADER_LEN: u64 = 32;
/// Bytes of a record before its payload: length, CRC, kind, seq.
const RECORD_OVERHEAD: usize = 17;
/// Bytes covered by the length and the CRC besides the payload: kind and seq.
const BODY_FIXED: usize = 9;
/// Usual size of a read by a segment reader, in bytes.
const READ_CHUNK: usize = 64 << 10;
/// Largest single read by a segment reader, in bytes (bounds the memory a garbage length
/// in a torn tail can make it allocate beyond what the file holds).
const READ_MAX: usize = 8 << 20;
/// A reader's or the writer's buffer above this capacity is shrunk once it is no longer
/// needed, in bytes.
const BUF_KEEP: usize = 1 << 20;

/// One record read back from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's seq: 1 for the first record of the queue, consecutive.
    pub seq: u64,
    /// The kind given to [`Writer::append`] (opaque to the queue).
    pub kind: u8,
    /// The payload given to [`Writer::append`].
    pub payload: Vec<u8>,
}

// ----------------------------------------------------------------------------------------
// Writer
// ----------------------------------------------------------------------------------------

/// The appending side of a queue. `Send + Sync`: share it (e.g. in an `Arc`) between the
/// tasks that append; appends are serialized by an internal mutex, so seqs follow the order
/// in which the appends took it.
///
/// Calls block on file I/O (a `write(2)` per append; two `fdatasync`s and a rename when a new
/// segment starts), like any short blocking file write.
pub struct Writer {
    inner: Mutex<Inner>,
    /// Copy of `Inner::next_seq - 1`, readable without the lock.
    last_seq: AtomicU64,
    /// Copy of `Inner::position`, readable without the lock.
    position: AtomicU64,
}

struct Inner {
    dir: PathBuf,
    gen: u64,
    segment_bytes: u64,
    /// The current segment, opened for writing.
    file: Arc<File>,
    path: PathBuf,
    /// Length of the current segment file in bytes (header included): where the next record
    /// goes.
    seg_len: u64,
    /// Seq of the next record.
    next_seq: u64,
    /// Position of the queue after the last record.
    position: u64,
    /// Encoding buffer, reused between appends.
    buf: Vec<u8>,
    /// Set when a failed write could not be undone: the file may end in a partial record.
    broken: bool,
}

impl Writer {
    /// Opens or creates the queue `gen` in directory `dir` (created with its parents if
    /// missing), with segments of at most [`SEGMENT_BYTES`] bytes.
    ///
    /// Recovery: removes leftover `.tmp` files of this generation, then reads every segment
    /// of the generation and checks every record (length, CRC-32, consecutive seqs) and
    /// every header (magic, version, generation, first seq, base position continuing the
    /// previous segment). A torn or corrupt tail of the *last* segment (an append cut short
    /// by a crash, garbage after the last whole record) is truncated away, with a warning.
    /// The next append gets the last seq + 1 (1 for an empty queue).
    ///
    /// # Errors
    ///
    /// The I/O errors of creating the directory and reading, truncating or creating the
    /// segment files; [`io::ErrorKind::InvalidData`] for a bad header, a corrupt or torn
    /// record in a segment other than the last one, a record with an unexpected seq, or a
    /// missing segment (a gap in seqs or positions), the message naming the file and the
    /// byte offset in it.
    pub fn open(dir: &Path, gen: u64) -> io::Result<Writer> {
        Writer::open_with(dir, gen, SEGMENT_BYTES)
    }

    /// [`Writer::open`] with another segment size limit, in bytes (header included); a
    /// segment is closed before an append that would take it past the limit, unless it
    /// holds no record yet. The limit only affects new appends: existing segments are kept
    /// as they are. Meant for tests, which want many small segments.
    ///
    /// # Errors
    ///
    /// As [`Writer::open`].
    pub fn open_with(dir: &Path, gen: u64, segment_bytes: u64) -> io::Result<Writer> {
        control::files::create_dir_all(dir)?;
        remove_files(dir, gen, true)?;
        let segs = list_segments(dir, gen)?;
        let inner = if segs.is_empty() {
            let (file, path) = create_segment(dir, gen, 1, 0)?;
            sync_dir(dir)?;
            Inner {
                dir: dir.to_path_buf(),
                gen,
                segment_bytes,
                file: Arc::new(file),
                path,
                seg_len: HEADER_LEN,
                next_seq: 1,
                position: 0,
                buf: Vec::new(),
                broken: false,
            }
        } else {
            recover(dir, gen, segment_bytes, &segs)?
        };
        Ok(Writer {
            last_seq: AtomicU64::new(inner.next_seq - 1),
            position: AtomicU64::new(inner.position),
            inner: Mutex::new(inner),
        })
    }

    /// Appends one record of kind `kind` (opaque to the queue) and returns its seq
    /// (consecutive, starting at 1). The record has been written with `write(2)` when this
    /// returns, not synced (see [`Writer::sync`]). Thread-safe.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for a payload over [`MAX_PAYLOAD`] bytes; the I/O
    /// errors of writing the record or starting a new segment. After an error no record was
    /// added (a partial write is truncated away); if even that truncation failed, every
    /// later append fails: the writer must be reopened, which recovers the queue.
    pub fn append(&self, kind: u8, payload: &[u8]) -> io::Result<u64> {
        self.append_many(&[(kind, payload)])
    }

    /// Appends several records, in order, with consecutive seqs and a single `write(2)`;
    /// returns the seq of the last one. Nothing is appended for an empty `items`, which
    /// returns [`Writer::last_seq`]. The records always go into the same segment.
    ///
    /// # Errors
    ///
    /// As [`Writer::append`]; on error none of the records was added.
    pub fn append_many(&self, items: &[(u8, &[u8])]) -> io::Result<u64> {
        for (_, payload) in items {
            check_payload(payload.len())?;
        }
        if items.is_empty() {
            return Ok(self.last_seq());
        }
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        if inner.broken {
            return Err(io::Error::other(format!(
                "queue segment {}: a failed write could not be undone; reopen the queue",
                inner.path.display()
            )));
        }
        let total: u64 = items
            .iter()
            .map(|(_, p)| (RECORD_OVERHEAD + p.len()) as u64)
            .sum();
        if inner.seg_len > HEADER_LEN && inner.seg_len + total > inner.segment_bytes {
            inner.roll()?;
        }
        inner.buf.clear();
        let mut seq = inner.next_seq;
        for (kind, payload) in items {
            encode_record(&mut inner.buf, *kind, seq, payload);
            seq += 1;
        }
        let written = inner.file.write_all_at(&inner.buf, inner.seg_len);
        if inner.buf.capacity() > BUF_KEEP {
            inner.buf.clear();
            inner.buf.shrink_to(BUF_KEEP);
        }
        if let Err(e) = written {
            if inner.file.set_len(inner.seg_len).is_err() {
                inner.broken = true;
            }
            return Err(e);
        }
        inner.seg_len += total;
        inner.next_seq = seq;
        inner.position += total;
        self.last_seq.store(seq - 1, Ordering::Release);
        self.position.store(inner.position, Ordering::Release);
        Ok(seq - 1)
    }

    /// Makes every record appended before this call durable across a host crash:
    /// `fdatasync` of the current segment (earlier segments were synced when the next one
    /// started). Appends from other threads are not blocked while it runs.
    ///
    /// # Errors
    ///
    /// The I/O error of `fdatasync`.
    pub fn sync(&self) -> io::Result<()> {
        let file = Arc::clone(&self.lock()?.file);
        file.sync_data()
    }

    /// [`Writer::sync`], returning the seq up to which every record is now durable (the last
    /// seq appended before the call).
    ///
    /// # Errors
    ///
    /// The I/O error of `fdatasync`.
    pub fn sync_upto(&self) -> io::Result<u64> {
        let upto = self.last_seq();
        self.sync()?;
        Ok(upto)
    }

    /// Seq of the last record appended, 0 if the queue has none (recovered records count).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Position of the queue, in bytes: the total size of the records appended since the
    /// queue was created (17 bytes + payload each), purged segments and earlier runs
    /// included. Monotonic; same scale as [`Reader::position`].
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("queue writer lock poisoned by a panic"))
    }
}

impl Inner {
    /// Closes the current segment (synced) and starts a new one at the next seq.
    fn roll(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let (file, path) = create_segment(&self.dir, self.gen, self.next_seq, self.position)?;
        // The new segment is in place: switch to it even if syncing the directory fails, so
        // that a retry does not replace a file a reader may already have opened.
        self.file = Arc::new(file);
        self.path = path;
        self.seg_len = HEADER_LEN;
        sync_dir(&self.dir)
    }
}

/// Recovery of [`Writer::open_with`] for a generation with segments (`segs`, sorted).
fn recover(dir: &Path, gen: u64, segment_bytes: u64, segs: &[(u64, PathBuf)]) -> io::Result<Inner> {
    let mut expect: Option<(u64, u64)> = None; // (seq, position) the next segment starts at
    for (i, (first, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let file = if last {
            OpenOptions::new().read(true).write(true).open(path)?
        } else {
            File::open(path)?
        };
        let mut seg = SegReader::new(file, path.clone(), gen, *first)?;
        if let Some((seq, pos)) = expect {
            if *first != seq {
                return Err(corrupt(
                    path,
                    0,
                    &format!("segment starts at seq {first}, expected {seq} (missing segment?)"),
                ));
            }
            if seg.base != pos {
                return Err(corrupt(
                    path,
                    24,
                    &format!("segment starts at position {}, expected {pos}", seg.base),
                ));
            }
        }
        let mut seq = *first;
        let bad = loop {
            match seg.peek()? {
                Peek::Record { seq: s, total, .. } => {
                    if s != seq {
                        return Err(corrupt(
                            path,
                            seg.off,
                            &format!("record has seq {s}, expected {seq}"),
                        ));
                    }
                    seg.consume(total);
                    seq += 1;
                }
                Peek::End { trailing: false } => break None,
                Peek::End { trailing: true } => break Some("incomplete record".to_string()),
                Peek::Corrupt(why) => break Some(why),
            }
        };
        if let Some(why) = bad {
            if !last {
                return Err(corrupt(path, seg.off, &why));
            }
            let len = seg.file.metadata()?.len();
            tracing::warn!(
                file = %path.display(),
                offset = seg.off,
                bytes = len - seg.off,
                "queue: cutting a torn tail after the last whole record ({why})"
            );
            seg.file.set_len(seg.off)?;
            seg.file.sync_data()?;
        }
        expect = Some((seq, seg.position()));
        if last {
            return Ok(Inner {
                dir: dir.to_path_buf(),
                gen,
                segment_bytes,
                path: path.clone(),
                seg_len: seg.off,
                next_seq: seq,
                position: seg.position(),
                file: Arc::new(seg.file),
                buf: Vec::new(),
                broken: false,
            });
        }
    }
    unreachable!("recover is called with at least one segment")
}

// ----------------------------------------------------------------------------------------
// Reader
// ----------------------------------------------------------------------------------------

/// The reading side of a queue: returns the records in seq order, following the writer into
/// new segments as it starts them. Any number of readers may be open. Calls block on file
/// I/O.
pub struct Reader {
    dir: PathBuf,
    gen: u64,
    /// The segment being read.
    seg: SegReader,
    /// Seq of the next record in the queue (returned or skipped).
    next_seq: u64,
    /// Records with a seq up to this are skipped.
    after: u64,
}

impl Reader {
    /// Opens queue `gen` in `dir` for reading, positioned before the first record with a seq
    /// greater than `after` (records with seq <= `after` are skipped, including ones
    /// appended later if `after` is beyond the end of the queue). Segments whose records
    /// all have seq <= `after` need not exist any more (see [`purge`]).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if the generation has no segment (no [`Writer`] ever
    /// opened it, or it was removed) or if records after `after` were purged; the I/O errors
    /// of reading; [`io::ErrorKind::InvalidData`] for a bad header or a corrupt record among
    /// those skipped, naming the file and the offset.
    pub fn open(dir: &Path, gen: u64, after: u64) -> io::Result<Reader> {
        let segs = list_segments(dir, gen)?;
        let Some((oldest, _)) = segs.first() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("queue {gen:016x} has no segment in {}", dir.display()),
            ));
        };
        let target = after.saturating_add(1);
        let Some((first, path)) = segs.iter().rev().find(|(f, _)| *f <= target) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "queue {gen:016x} in {}: the records after seq {after} were purged \
                     (the oldest segment starts at seq {oldest})",
                    dir.display()
                ),
            ));
        };
        let seg = SegReader::new(File::open(path)?, path.clone(), gen, *first)?;
        let mut reader = Reader {
            dir: dir.to_path_buf(),
            gen,
            seg,
            next_seq: *first,
            after,
        };
        // Skip what is already there, so that position() starts right after `after`.
        while let Some((_, seq, total)) = reader.peek()? {
            if seq > after {
                break;
            }
            reader.consume(total);
        }
        Ok(reader)
    }

    /// Returns the next whole record, or `Ok(None)` if there is none yet: a later call sees
    /// the records appended meanwhile. A partially written record at the end of the queue
    /// (an append in progress) is not an error: `None` is returned and it is read again by
    /// the next call. Follows the writer into its next segment when it has started one.
    ///
    /// # Errors
    ///
    /// The I/O errors of reading; [`io::ErrorKind::InvalidData`] for a corrupt record (bad
    /// length or CRC, unexpected seq), a bad segment header, or a segment that ends in a
    /// partial record although a later segment exists, naming the file and the offset. The
    /// reader does not move past a corrupt record.
    // Not an Iterator: `None` means "nothing yet", a later call may return more.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> io::Result<Option<Record>> {
        while let Some((kind, seq, total)) = self.peek()? {
            if seq <= self.after {
                self.consume(total);
                continue;
            }
            let payload = self.seg.payload(total).to_vec();
            self.consume(total);
            return Ok(Some(Record { seq, kind, payload }));
        }
        Ok(None)
    }

    /// Position of the reader, in bytes on the scale of [`Writer::position`]: just after the
    /// last record returned or skipped (right after record `after` once opened, if the queue
    /// has it).
    pub fn position(&self) -> u64 {
        self.seg.position()
    }

    /// The next whole record (kind, seq, total length) without consuming it, following into
    /// the next segment; `None` if there is none yet.
    fn peek(&mut self) -> io::Result<Option<(u8, u64, usize)>> {
        loop {
            let trailing = match self.seg.peek()? {
                Peek::Record { kind, seq, total } => return self.check_seq(kind, seq, total),
                Peek::Corrupt(why) => return Err(corrupt(&self.seg.path, self.seg.off, &why)),
                Peek::End { trailing } => trailing,
            };
            // The writer starts a new segment only after at least one record, named after
            // the seq that follows the last record of the one before.
            if self.next_seq == self.seg.first {
                return Ok(None);
            }
            let path = self.dir.join(segment_name(self.gen, self.next_seq));
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if trailing {
                // The bytes seen may have been cut since (a writer recovering from a
                // crash): look again now that the segment is known to be closed.
                match self.seg.peek()? {
                    Peek::Record { kind, seq, total } => return self.check_seq(kind, seq, total),
                    Peek::End { trailing: false } => {}
                    Peek::End { trailing: true } => {
                        return Err(corrupt(
                            &self.seg.path,
                            self.seg.off,
                            &format!(
                                "incomplete record at the end of a segment followed by {}",
                                path.display()
                            ),
                        ))
                    }
                    Peek::Corrupt(why) => {
                        return Err(corrupt(&self.seg.path, self.seg.off, &why));
                    }
                }
            }
            let next = SegReader::new(file, path, self.gen, self.next_seq)?;
            let end = self.seg.position();
            if next.base != end {
                return Err(corrupt(
                    &next.path,
                    24,
                    &format!("segment starts at position {}, expected {end}", next.base),
                ));
            }
            self.seg = next;
        }
    }

    fn check_seq(&self, kind: u8, seq: u64, total: usize) -> io::Result<Option<(u8, u64, usize)>> {
        if seq != self.next_seq {
            return Err(corrupt(
                &self.seg.path,
                self.seg.off,
                &format!("record has seq {seq}, expected {}", self.next_seq),
            ));
        }
        Ok(Some((kind, seq, total)))
    }

    fn consume(&mut self, total: usize) {
        self.seg.consume(total);
        self.next_seq += 1;
    }
}

// ----------------------------------------------------------------------------------------
// Maintenance
// ----------------------------------------------------------------------------------------

/// Deletes, oldest first, the segments of queue `gen` in `dir` whose records all have a seq
/// <= `applied`; never the last segment (the one the writer appends to), even if all its
/// records are applied. Returns the bytes freed (sizes of the files deleted). Safe while a
/// [`Writer`] and readers are open: a reader reading a deleted segment keeps its file open,
/// but a reader must not need records in a segment not yet opened that gets deleted.
///
/// # Errors
///
/// The I/O errors of listing the directory and deleting files (files already gone are
/// fine). A missing directory deletes nothing.
pub fn purge(dir: &Path, gen: u64, applied: u64) -> io::Result<u64> {
    let segs = list_segments(dir, gen)?;
    let mut freed = 0;
    for pair in segs.windows(2) {
        let (path, next_first) = (&pair[0].1, pair[1].0);
        if next_first - 1 > applied {
            break;
        }
        let len = match fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match fs::remove_file(path) {
            Ok(()) => freed += len,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(freed)
}

/// Deletes every file of queue `gen` in `dir` (segments and leftover `.tmp` files). The
/// [`Writer`] of the generation must have been dropped; open readers keep what they have
/// open but see nothing new.
///
/// # Errors
///
/// The I/O errors of listing the directory and deleting files (files already gone are
/// fine). A missing directory is fine.
pub fn remove(dir: &Path, gen: u64) -> io::Result<()> {
    remove_files(dir, gen, false)
}

/// The generations that have files (segments or leftover `.tmp` files) in `dir`, sorted
/// ascending, for cleanup. Other files in `dir` are ignored.
///
/// # Errors
///
/// The I/O errors of listing the directory. A missing directory has no generation.
pub fn generations(dir: &Path) -> io::Result<Vec<u64>> {
    let mut gens = BTreeSet::new();
    for (gen, _, _, _) in queue_files(dir)? {
        gens.insert(gen);
    }
    Ok(gens.into_iter().collect())
}

// ----------------------------------------------------------------------------------------
// Files
// ----------------------------------------------------------------------------------------

fn segment_name(gen: u64, first: u64) -> String {
    format!("q-{gen:016x}-{first:016x}.seg")
}

fn hex16(s: &str) -> Option<u64> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if s.len() == 16 && s.bytes().all(lower_hex) {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Parses a queue file name: (gen, first seq, is a `.tmp` file).
fn parse_name(name: &str) -> Option<(u64, u64, bool)> {
    let (stem, tmp) = match name.strip_suffix(".seg.tmp") {
        Some(stem) => (stem, true),
        None => (name.strip_suffix(".seg")?, false),
    };
    let (gen, first) = stem.strip_prefix("q-")?.split_once('-')?;
    Some((hex16(gen)?, hex16(first)?, tmp))
}

/// Every queue file in `dir`: (gen, first seq, is `.tmp`, path). Empty if `dir` is missing.
fn queue_files(dir: &Path) -> io::Result<Vec<(u64, u64, bool, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((gen, first, tmp)) = name.to_str().and_then(parse_name) {
            files.push((gen, first, tmp, entry.path()));
        }
    }
    Ok(files)
}

/// The segments of queue `gen` in `dir`: (first seq, path), sorted by first seq.
fn list_segments(dir: &Path, gen: u64) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segs: Vec<(u64, PathBuf)> = queue_files(dir)?
        .into_iter()
        .filter(|(g, _, tmp, _)| *g == gen && !tmp)
        .map(|(_, first, _, path)| (first, path))
        .collect();
    segs.sort_unstable_by_key(|(first, _)| *first);
    Ok(segs)
}

/// Deletes the `.tmp` files (`only_tmp`) or all files of queue `gen` in `dir`.
fn remove_files(dir: &Path, gen: u64, only_tmp: bool) -> io::Result<()> {
    for (g, _, tmp, path) in queue_files(dir)? {
        if g != gen || (only_tmp && !tmp) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates segment `first` of queue `gen` with base position `base`: header written and
/// synced in a `.tmp` file, then renamed into place (the directory is not synced).
fn create_segment(dir: &Path, gen: u64, first: u64, base: u64) -> io::Result<(File, PathBuf)> {
    let name = segment_name(gen, first);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let file = control::files::create(&tmp)?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[0..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&gen.to_le_bytes());
    header[16..24].copy_from_slice(&first.to_le_bytes());
    header[24..32].copy_from_slice(&base.to_le_bytes());
    file.write_all_at(&header, 0)?;
    file.sync_data()?;
    fs::rename(&tmp, &path)?;
    Ok((file, path))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn check_payload(len: usize) -> io::Result<()> {
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("queue record payload of {len} bytes exceeds the limit of {MAX_PAYLOAD}"),
        ));
    }
    Ok(())
}

/// Appends the encoding of one record to `buf`.
fn encode_record(buf: &mut Vec<u8>, kind: u8, seq: u64, payload: &[u8]) {
    let len = (BODY_FIXED + payload.len()) as u32;
    let seq = seq.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&seq);
    crc.update(payload);
    buf.reserve(RECORD_OVERHEAD + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&seq);
    buf.extend_from_slice(payload);
}

fn corrupt(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "queue segment {} at offset {offset}: {what}",
            path.display()
        ),
    )
}

fn le_u32(b: &[u8]) -> u32 {
    b.get(..4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le_u64(b: &[u8]) -> u64 {
    super::le_u64(b).unwrap_or(0)
}

/// What a segment holds at the reading offset.
enum Peek {
    /// A whole, valid record (seq not checked) of `total` bytes.
    Record { kind: u8, seq: u64, total: usize },
    /// No whole record: the segment ends here (`trailing`: after some bytes of a record).
    End { trailing: bool },
    /// An invalid record.
    Corrupt(String),
}

/// Sequential reading of one segment file through a buffer.
struct SegReader {
    file: File,
    path: PathBuf,
    first: u64,
    base: u64,
    /// Buffered bytes of the file, from offset `buf_off`.
    buf: Vec<u8>,
    buf_off: u64,
    /// File offset of the next record.
    off: u64,
}

impl SegReader {
    /// Reads and checks the header of segment `first` of queue `gen`.
    fn new(file: File, path: PathBuf, gen: u64, first: u64) -> io::Result<SegReader> {
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                corrupt(&path, 0, "truncated segment header")
            } else {
                e
            }
        })?;
        let what = if &header[0..4] != MAGIC {
            Some("bad magic (not a queue segment)".to_string())
        } else if le_u32(&header[4..]) != VERSION {
            Some(format!(
                "unsupported format version {}",
                le_u32(&header[4..])
            ))
        } else if le_u64(&header[8..]) != gen {
            Some(format!("header names generation {}", le_u64(&header[8..])))
        } else if le_u64(&header[16..]) != first {
            Some(format!("header names first seq {}", le_u64(&header[16..])))
        } else {
            None
        };
        if let Some(what) = what {
            return Err(corrupt(&path, 0, &what));
        }
        Ok(SegReader {
            file,
            path,
            first,
            base: le_u64(&header[24..]),
            buf: Vec::new(),
            buf_off: HEADER_LEN,
            off: HEADER_LEN,
        })
    }

    /// Queue position at the reading offset.
    fn position(&self) -> u64 {
        self.base + (self.off - HEADER_LEN)
    }

    /// Buffered bytes from the reading offset.
    fn pending(&self) -> &[u8] {
        &self.buf[(self.off - self.buf_off) as usize..]
    }

    /// Makes `need` bytes from the reading offset available in the buffer if the file has
    /// them; returns whether it does.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        if self.pending().len() >= need {
            return Ok(true);
        }
        let start = (self.off - self.buf_off) as usize;
        self.buf.drain(..start);
        self.buf_off = self.off;
        if self.buf.capacity() > BUF_KEEP && need <= BUF_KEEP {
            self.buf.shrink_to(BUF_KEEP);
        }
        while self.buf.len() < need {
            let have = self.buf.len();
            let want = (need - have).clamp(READ_CHUNK, READ_MAX);
            self.buf.resize(have + want, 0);
            let at = self.buf_off + have as u64;
            let n = loop {
                match self.file.read_at(&mut self.buf[have..], at) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(have);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(have + n);
            if n == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What is at the reading offset. At the end, the buffered bytes past the offset are
    /// dropped, so that a later call reads the file again.
    fn peek(&mut self) -> io::Result<Peek> {
        if !self.fill(8)? {
            return Ok(self.end());
        }
        let head = self.pending();
        let len = le_u32(head) as usize;
        let crc = le_u32(&head[4..]);
        if !(BODY_FIXED..=BODY_FIXED + MAX_PAYLOAD).contains(&len) {
            return Ok(Peek::Corrupt(format!("invalid record length {len}")));
        }
        if !self.fill(8 + len)? {
            return Ok(self.end());
        }
        let body = &self.pending()[8..8 + len];
        if crc32fast::hash(body) != crc {
            return Ok(Peek::Corrupt("record CRC mismatch".to_string()));
        }
        Ok(Peek::Record {
            kind: body[0],
            seq: le_u64(&body[1..]),
            total: 8 + len,
        })
    }

    fn end(&mut self) -> Peek {
        let trailing = !self.pending().is_empty();
        self.buf.clear();
        self.buf_off = self.off;
        Peek::End { trailing }
    }

    /// The payload of the record at the reading offset, `total` bytes long (as peeked).
    fn payload(&self, total: usize) -> &[u8] {
        &self.pending()[RECORD_OVERHEAD..total]
    }

    fn consume(&mut self, total: usize) {
        self.off += total as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// A unique directory under the system temp dir, deleted on drop. Not created: the
    /// writer creates it.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            TempDir(std::env::temp_dir().join(format!(
                "pgshift-queue-{tag}-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )))
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("rec-{i}-").repeat((i % 7) as usize).into_bytes()
    }

    fn size(payload: &[u8]) -> u64 {
        (RECORD_OVERHEAD + payload.len()) as u64
    }

    fn read_all(r: &mut Reader) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(rec) = r.next().unwrap() {
            out.push(rec);
        }
        out
    }

    fn segments(dir: &Path, gen: u64) -> Vec<(u64, PathBuf)> {
        list_segments(dir, gen).unwrap()
    }

    fn append_to(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[test]
    fn writer_is_send_sync_reader_is_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Writer>();
        send::<Reader>();
    }

    #[test]
    fn queue_directory_0700_segments_0600() {
        // A permissive umask, as on many hosts: the modes must come from pgshift, not from it.
        // SAFETY: umask(2) cannot fail; other tests only see files made more permissive.
        unsafe { libc::umask(0o022) };
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("modes");
        let dir = tmp.path().join("q/r");
        let w = Writer::open_with(&dir, 3, 256).unwrap();
        for i in 0..20u64 {
            w.append(1, &payload(i)).unwrap();
        }
        w.sync().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("q")), 0o700);
        let segs = list_segments(&dir, 3).unwrap();
        assert!(segs.len() > 1, "{segs:?}");
        for (_, p) in segs {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn append_and_read_back_across_segments() {
        let tmp = TempDir::new("roundtrip");
        let dir = tmp.path().join("a/b");
        let w = Writer::open_with(&dir, 7, 256).unwrap();
        assert_eq!((w.last_seq(), w.position()), (0, 0));
        let mut expected = vec![(0u8, Vec::new(), 0u64)]; // index = seq: (kind, payload, position after)
        let mut pos = 0;
        for i in 1..=60u64 {
            let p = payload(i);
            assert_eq!(w.append((i % 3) as u8, &p).unwrap(), i);
            pos += size(&p);
            assert_eq!((w.last_seq(), w.position()), (i, pos));
            expected.push(((i % 3) as u8, p, pos));
        }
        let batch: Vec<(u8, Vec<u8>)> = (61..=65u64).map(|i| (9, payload(i))).collect();
        let items: Vec<(u8, &[u8])> = batch.iter().map(|(k, p)| (*k, p.as_slice())).collect();
        assert_eq!(w.append_many(&items).unwrap(), 65);
        assert_eq!(w.append_many(&[]).unwrap(), 65);
        for (k, p) in batch {
            pos += size(&p);
            expected.push((k, p, pos));
        }
        assert_eq!((w.last_seq(), w.position()), (65, pos));
        w.sync().unwrap();

        let segs = segments(&dir, 7);
        assert!(segs.len() > 3, "{} segments", segs.len());
        assert_eq!(
            segs[0].1.file_name().unwrap(),
            "q-0000000000000007-0000000000000001.seg"
        );
        for (_, path) in &segs {
            assert!(file_len(path) <= 256, "{}", path.display());
        }

        let mut r = Reader::open(&dir, 7, 0).unwrap();
        assert_eq!(r.position(), 0);
        let mut last_pos = 0;
        for seq in 1..=65u64 {
            let rec = r.next().unwrap().expect("record");
            let (kind, p, pos) = &expected[seq as usize];
            assert_eq!((rec.seq, rec.kind, &rec.payload), (seq, *kind, p));
            assert!(r.position() > last_pos);
            assert_eq!(r.position(), *pos);
            last_pos = r.position();
        }
        assert_eq!(r.next().unwrap(), None);
        assert_eq!(r.position(), w.position());
    }

    #[test]
    fn reader_sees_records_appended_after_none() {
        let tmp = TempDir::new("follow");
        let w = Writer::open_with(tmp.path(), 1, 200).unwrap();
        let mut r = Reader::open(tmp.path(), 1, 0).unwrap();
        assert_eq!(r.next().unwrap(), None);
        assert_eq!(r.next().unwrap(), None);
        w.append(1, b"first").unwrap();
        assert_eq!(r.next().unwrap().unwrap().payload, b"first");
        assert_eq!(r.next().unwrap(), None);
        // Enough to start several new segments while the reader waits.
        for i in 2..=30 {
            w.append(2, &payload(i)).unwrap();
        }
        assert!(segments(tmp.path(), 1).len() > 2);
        let recs = read_all(&mut r);
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (2..=30).collect::<Vec<_>>()
        );
        assert_eq!(r.next().unwrap(), None);
        // The segment boundary falls right where the reader waits.
        for i in 31..=60 {
            w.append(3, &payload(i)).unwrap();
            let rec = r.next().unwrap().unwrap();
            assert_eq!((rec.seq, rec.payload), (i, payload(i)));
            assert_eq!(r.next().unwrap(), None);
            assert_eq!(r.position(), w.position());
        }
    }

    #[test]
    fn reader_waits_for_a_partially_written_record() {
        let tmp = TempDir::new("partial");
        let w = Writer::open(tmp.path(), 2).unwrap();
        w.append(1, b"one").unwrap();
        let pos1 = w.position();
        drop(w);
        let path = segments(tmp.path(), 2)[0].1.clone();
        let mut rec = Vec::new();
        encode_record(&mut rec, 5, 2, b"the second record");

        let mut r = Reader::open(tmp.path(), 2, 0).unwrap();
        assert_eq!(r.next().unwrap().unwrap().seq, 1);
        assert_eq!(r.next().unwrap(), None);
        append_to(&path, &rec[..3]);
        assert_eq!(r.next().unwrap(), None);
        append_to(&path, &rec[3..20]);
        assert_eq!(r.next().unwrap(), None);
        assert_eq!(r.position(), pos1);
        append_to(&path, &rec[20..]);
        let got = r.next().unwrap().unwrap();
        assert_eq!(
            (got.seq, got.kind, &got.payload[..]),
            (2, 5, &b"the second record"[..])
        );
        assert_eq!(r.position(), file_len(&path) - HEADER_LEN);
    }

    #[test]
    fn reopen_continues_and_cuts_a_torn_tail() {
        let tmp = TempDir::new("reopen");
        let dir = tmp.path();
        let w = Writer::open_with(dir, 1, 300).unwrap();
        for i in 1..=10 {
            w.append(1, &payload(i)).unwrap();
        }
        let pos10 = w.position();
        drop(w);

        let w = Writer::open_with(dir, 1, 300).unwrap();
        assert_eq!((w.last_seq(), w.position()), (10, pos10));
        assert_eq!(w.append(1, b"eleven").unwrap(), 11);
        drop(w);

        // A torn last record: cut off, and its seq is given again.
        let last = segments(dir, 1).pop().unwrap().1;
        let len = file_len(&last);
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let w = Writer::open_with(dir, 1, 300).unwrap();
        assert_eq!((w.last_seq(), w.position()), (10, pos10));
        assert_eq!(file_len(&last), len - size(b"eleven"));
        assert_eq!(w.append(1, b"eleven again").unwrap(), 11);
        let pos11 = w.position();
        drop(w);

        // Garbage after the last record, of several shapes: cut off.
        let mut bad_crc = Vec::new();
        encode_record(&mut bad_crc, 1, 12, b"twelve");
        bad_crc[RECORD_OVERHEAD + 2] ^= 0x40;
        let garbages: [Vec<u8>; 4] = [
            b"\xde\xad\xbe\xef\x01\x02\x03\x04\x05\x06\x07\x08\x09".to_vec(),
            vec![0; 4096],
            vec![0xff; 5],
            bad_crc,
        ];
        for garbage in garbages {
            let last = segments(dir, 1).pop().unwrap().1;
            let len = file_len(&last);
            append_to(&last, &garbage);
            let w = Writer::open_with(dir, 1, 300).unwrap();
            assert_eq!((w.last_seq(), w.position()), (11, pos11));
            assert_eq!(file_len(&last), len);
        }

        let w = Writer::open_with(dir, 1, 300).unwrap();
        assert_eq!(w.append(4, b"twelve").unwrap(), 12);
        let recs = read_all(&mut Reader::open(dir, 1, 0).unwrap());
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=12).collect::<Vec<_>>()
        );
        assert_eq!(recs[10].payload, b"eleven again");
        assert_eq!(recs[11].payload, b"twelve");
    }

    #[test]
    fn corrupt_middle_segment_is_an_error_naming_the_file() {
        let tmp = TempDir::new("corrupt");
        let dir = tmp.path();
        let w = Writer::open_with(dir, 4, 128).unwrap();
        for i in 1..=30 {
            w.append(1, &payload(i)).unwrap();
        }
        drop(w);
        let segs = segments(dir, 4);
        assert!(segs.len() >= 3);
        let victim = &segs[1].1;
        let name = victim.file_name().unwrap().to_str().unwrap().to_string();
        let original = fs::read(victim).unwrap();
        let mut bytes = original.clone();
        bytes[HEADER_LEN as usize + RECORD_OVERHEAD] ^= 1; // first payload byte of the first record
        fs::write(victim, &bytes).unwrap();

        let err = Writer::open_with(dir, 4, 128)
            .err()
            .expect("open must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let msg = err.to_string();
        assert!(msg.contains(&name) && msg.contains("offset 32"), "{msg}");

        let mut r = Reader::open(dir, 4, 0).unwrap();
        let mut n = 0;
        let err = loop {
            match r.next() {
                Ok(Some(_)) => n += 1,
                Ok(None) => panic!("reader must fail"),
                Err(e) => break e,
            }
        };
        assert_eq!(n, segs[1].0 - 1);
        assert!(err.to_string().contains(&name), "{err}");
        assert!(r.next().is_err(), "the reader stays on the corrupt record");

        // A torn record at the end of a middle segment is an error too.
        let mut bytes = original.clone();
        bytes.truncate(bytes.len() - 2);
        fs::write(victim, &bytes).unwrap();
        let err = Writer::open_with(dir, 4, 128)
            .err()
            .expect("open must fail");
        assert!(err.to_string().contains(&name), "{err}");

        // And a damaged header.
        let mut bytes = original;
        bytes[0] = b'X';
        fs::write(victim, &bytes).unwrap();
        let err = Writer::open_with(dir, 4, 128)
            .err()
            .expect("open must fail");
        assert!(err.to_string().contains(&name), "{err}");
        assert!(err.to_string().contains("magic"), "{err}");
    }

    #[test]
    fn reader_open_after_skips() {
        let tmp = TempDir::new("after");
        let dir = tmp.path();
        let w = Writer::open_with(dir, 5, 150).unwrap();
        let mut pos = vec![0u64];
        for i in 1..=40 {
            w.append(1, &payload(i)).unwrap();
            pos.push(w.position());
        }
        for after in [0u64, 1, 5, 17, 39, 40] {
            let mut r = Reader::open(dir, 5, after).unwrap();
            assert_eq!(r.position(), pos[after as usize], "after {after}");
            let recs = read_all(&mut r);
            let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (after + 1..=40).collect::<Vec<_>>());
            for rec in &recs {
                assert_eq!(rec.payload, payload(rec.seq));
            }
        }
        // Beyond the end: waits, and skips what comes up to `after`.
        let mut r = Reader::open(dir, 5, 50).unwrap();
        assert_eq!(r.position(), pos[40]);
        assert_eq!(r.next().unwrap(), None);
        for i in 41..=55 {
            w.append(2, &payload(i)).unwrap();
            pos.push(w.position());
        }
        let rec = r.next().unwrap().unwrap();
        assert_eq!((rec.seq, rec.kind), (51, 2));
        assert_eq!(r.position(), pos[51]);

        let err = Reader::open(dir, 99, 0).err().expect("no such generation");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn purge_deletes_only_fully_applied_older_segments() {
        let tmp = TempDir::new("purge");
        let dir = tmp.path();
        let w = Writer::open_with(dir, 3, 200).unwrap();
        for i in 1..=40 {
            w.append(1, &payload(i)).unwrap();
        }
        let segs = segments(dir, 3);
        assert!(segs.len() >= 5, "{} segments", segs.len());
        let firsts: Vec<u64> = segs.iter().map(|(f, _)| *f).collect();
        let sizes: Vec<u64> = segs.iter().map(|(_, p)| file_len(p)).collect();

        // A reader that has applied everything up to the end of segment 1.
        let mut r = Reader::open(dir, 3, 0).unwrap();
        for seq in 1..firsts[2] {
            assert_eq!(r.next().unwrap().unwrap().seq, seq);
        }

        assert_eq!(purge(dir, 3, 0).unwrap(), 0);
        assert_eq!(purge(dir, 3, firsts[1] - 2).unwrap(), 0);
        assert_eq!(segments(dir, 3).len(), segs.len());
        assert_eq!(purge(dir, 3, firsts[1] - 1).unwrap(), sizes[0]);
        assert_eq!(purge(dir, 3, firsts[2] - 1).unwrap(), sizes[1]);
        let left: Vec<u64> = segments(dir, 3).iter().map(|(f, _)| *f).collect();
        assert_eq!(left, firsts[2..]);

        // The reader goes on; new readers start from what is left.
        for seq in firsts[2]..=40 {
            assert_eq!(r.next().unwrap().unwrap().seq, seq);
        }
        let mut r2 = Reader::open(dir, 3, firsts[2] - 1).unwrap();
        let seqs: Vec<u64> = read_all(&mut r2).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (firsts[2]..=40).collect::<Vec<_>>());
        let err = Reader::open(dir, 3, firsts[2] - 2).err().expect("purged");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("purged"), "{err}");

        // Never the last segment, even when all is applied.
        let freed = purge(dir, 3, u64::MAX).unwrap();
        assert_eq!(freed, sizes[2..sizes.len() - 1].iter().sum::<u64>());
        let left = segments(dir, 3);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, *firsts.last().unwrap());

        // Positions and seqs survive the purge, appends and reopening.
        let pos = w.position();
        assert_eq!(w.append(1, b"41").unwrap(), 41);
        assert!(r.next().unwrap().is_some());
        drop(w);
        let w = Writer::open_with(dir, 3, 200).unwrap();
        assert_eq!((w.last_seq(), w.position()), (41, pos + size(b"41")));
        let mut r3 = Reader::open(dir, 3, 40).unwrap();
        assert_eq!(r3.position(), pos);
        assert_eq!(r3.next().unwrap().unwrap().payload, b"41");
        assert_eq!(r3.position(), w.position());
    }

    #[test]
    fn concurrent_appends_are_gap_free() {
        const THREADS: u64 = 8;
        const OPS: u64 = 400;
        let tmp = TempDir::new("concurrent");
        let dir = tmp.path().to_path_buf();
        let w = Arc::new(Writer::open_with(&dir, 9, 4096).unwrap());
        let total = THREADS * (OPS / 5 * 3 + OPS / 5 * 4);

        let reader = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut r = Reader::open(&dir, 9, 0).unwrap();
                let mut recs = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while (recs.len() as u64) < total {
                    assert!(Instant::now() < deadline, "reader stuck at {}", recs.len());
                    match r.next().unwrap() {
                        Some(rec) => recs.push(rec),
                        None => std::thread::sleep(Duration::from_micros(200)),
                    }
                }
                assert_eq!(r.next().unwrap(), None);
                recs
            })
        };
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    let mut got = Vec::new(); // (seq, payload)
                    for j in 0..OPS {
                        if j % 5 == 0 {
                            let ps: Vec<Vec<u8>> = (0..3)
                                .map(|k| format!("{t}:{j}:{k}").into_bytes())
                                .collect();
                            let items: Vec<(u8, &[u8])> =
                                ps.iter().map(|p| (t as u8, p.as_slice())).collect();
                            let last = w.append_many(&items).unwrap();
                            for (k, p) in ps.into_iter().enumerate() {
                                got.push((last - 2 + k as u64, p));
                            }
                        } else {
                            let p = format!("{t}:{j}:0").into_bytes();
                            got.push((w.append(t as u8, &p).unwrap(), p));
                        }
                    }
                    got
                })
            })
            .collect();
        let mut by_seq = HashMap::new();
        for h in writers {
            let got = h.join().unwrap();
            assert!(got.windows(2).all(|p| p[0].0 < p[1].0), "per-thread order");
            for (seq, p) in got {
                assert!(by_seq.insert(seq, p).is_none(), "seq {seq} twice");
            }
        }
        let recs = reader.join().unwrap();
        assert_eq!(w.last_seq(), total);
        assert!(segments(&dir, 9).len() > 10);
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>()
        );
        let mut seen = BTreeSet::new();
        for rec in &recs {
            assert_eq!(by_seq[&rec.seq], rec.payload, "seq {}", rec.seq);
            assert!(seen.insert(rec.payload.clone()), "payload twice");
            assert_eq!(
                rec.kind.to_string(),
                String::from_utf8_lossy(&rec.payload)[..1]
            );
        }
        assert_eq!(seen.len() as u64, total);
    }

    #[test]
    fn rejects_oversized_payloads() {
        let tmp = TempDir::new("big");
        let w = Writer::open(tmp.path(), 1).unwrap();
        let big = vec![0u8; MAX_PAYLOAD + 1]; // zeroed pages, never touched
        let err = w.append(1, &big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = w.append_many(&[(1, b"ok"), (1, &big)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!((w.last_seq(), w.position()), (0, 0));
        assert_eq!(w.append(1, b"").unwrap(), 1);
        let rec = Reader::open(tmp.path(), 1, 0)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!((rec.seq, rec.payload.len()), (1, 0));
    }

    #[test]
    fn generations_and_remove() {
        let tmp = TempDir::new("gens");
        let dir = tmp.path();
        assert_eq!(generations(dir).unwrap(), Vec::<u64>::new());
        remove(dir, 1).unwrap();
        for gen in [3, 1, 0x10] {
            Writer::open(dir, gen).unwrap().append(1, b"x").unwrap();
        }
        fs::write(dir.join("unrelated.txt"), b"keep").unwrap();
        fs::write(dir.join(format!("{}.tmp", segment_name(0x20, 1))), b"").unwrap();
        assert_eq!(generations(dir).unwrap(), vec![1, 3, 0x10, 0x20]);
        remove(dir, 1).unwrap();
        remove(dir, 0x20).unwrap();
        assert_eq!(generations(dir).unwrap(), vec![3, 0x10]);
        assert!(dir.join("unrelated.txt").exists());
        // A removed generation starts over.
        let w = Writer::open(dir, 1).unwrap();
        assert_eq!((w.last_seq(), w.position()), (0, 0));
        assert_eq!(w.append(1, b"y").unwrap(), 1);
    }

    #[test]
    fn open_removes_leftover_tmp_files() {
        let tmp = TempDir::new("tmpfiles");
        let dir = tmp.path();
        let w = Writer::open(dir, 6).unwrap();
        w.append(1, b"a").unwrap();
        drop(w);
        let leftover = dir.join(format!("{}.tmp", segment_name(6, 2)));
        fs::write(&leftover, b"PGSQ").unwrap();
        let w = Writer::open(dir, 6).unwrap();
        assert!(!leftover.exists());
        assert_eq!(w.append(1, b"b").unwrap(), 2);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(
            parse_name(&segment_name(0xabc, 0x1234)),
            Some((0xabc, 0x1234, false))
        );
        assert_eq!(
            parse_name("q-0000000000000001-0000000000000002.seg.tmp"),
            Some((1, 2, true))
        );
        for bad in [
            "q-0000000000000001-0000000000000002",
            "q-000000000000001-0000000000000002.seg",
            "q-000000000000000A-0000000000000002.seg",
            "q-+000000000000001-0000000000000002.seg",
            "x-0000000000000001-0000000000000002.seg",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
