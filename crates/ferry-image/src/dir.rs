//! Writing and reading an image directory atomically.
//!
//! A dump writes its files into a hidden staging directory inside the image directory
//! (`.ferry-dump-PID`), each fsynced, and nothing in the image directory changes until the
//! commit: a dump that fails at any point (refused, out of space, killed) leaves an older image
//! there intact, and removes everything it created — its staging directory, and the image
//! directory itself if the dump created it. The commit then replaces the older image as a
//! whole: its files move aside (its inventory first), the new ones move in (`inventory.img`,
//! with every file's size and checksum, last), the directory is fsynced, and the old files are
//! removed (by a dump, once the tree is no longer frozen); a failure on the way moves
//! everything back. So the directory holds either the older image, or the new one and only its
//! files, and never a complete-looking mix. The one window
//! left is a SIGKILL of ferry during those renames, which leaves no complete image (never a
//! mixed one); the next dump into the directory removes what such a dump, or one killed
//! earlier, left behind. An exclusive `flock` of the directory keeps two dumps out of one
//! directory. Files are created mode 0600 and the directory 0700: images hold process memory,
//! which means secrets.

use crate::sign::SigningKey;
use crate::{
    decode_record, encode_record, FileDigest, ImageError, ImageSignature, Inventory, Process, RecordKind, INVENTORY,
    SIGNATURE,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Where the files of an image go instead of a directory: a migration stream. Files arrive as
/// `begin`, any number of `data`, `end` (several may be open at once, told apart by `id`), and
/// the inventory record last, in `commit`.
pub trait ImageSink: Send {
    fn begin(&mut self, id: u32, name: &str) -> io::Result<()>;
    fn data(&mut self, id: u32, bytes: &[u8]) -> io::Result<()>;
    fn end(&mut self, id: u32, size: u64, crc32: u32) -> io::Result<()>;
    fn commit(&mut self, inventory: &[u8]) -> io::Result<()>;
}

type SharedSink = Arc<Mutex<dyn ImageSink>>;

fn sink_lock(s: &SharedSink) -> std::sync::MutexGuard<'_, dyn ImageSink + 'static> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(file: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { file: file.display().to_string(), source }
}

/// A failed step of writing `file` (its name in the image directory).
fn write_err<'a>(action: &'static str, file: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Write { action, file: file.display().to_string(), source }
}

/// Prefix of the hidden directory a dump writes its files into until the commit.
const STAGING: &str = ".ferry-dump-";
/// Prefix of the hidden directory the older image's files move to during a commit.
const ASIDE: &str = ".ferry-old-";

/// Whether `name` is the name of a file a dump writes (the inventory, or a `KIND-ID.img` of a
/// kind ferry writes): the files of an older image that a new one replaces, with those its
/// inventory lists. (A new kind of file belongs here too.)
pub fn is_image_file_name(name: &str) -> bool {
    if name == INVENTORY || name == SIGNATURE {
        return true;
    }
    let Some(stem) = name.strip_suffix(".img") else { return false };
    ["process-", "pages-", "memfd-", "ghost-", "sysvshm-"]
        .iter()
        .any(|kind| stem.strip_prefix(kind).is_some_and(|id| !id.is_empty() && !id.contains('/')))
}

/// Fault injection for tests (`FERRY_FAULT`, like ferry-engine's `kill-at-injection`):
/// `fail-write:NAME` makes every write of image file NAME fail as a full file system would,
/// `fail-move:NAME` makes moving NAME into place at the commit fail — to check that a dump
/// failing at that point leaves nothing behind and an older image intact.
fn fault(kind: &str, name: &str) -> bool {
    std::env::var("FERRY_FAULT")
        .ok()
        .and_then(|s| Some(s.strip_prefix(kind)?.strip_prefix(':')? == name))
        .unwrap_or(false)
}

fn injected_full() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "no space left on device (injected by FERRY_FAULT)")
}

/// The older image's files a commit replaced, moved aside: removed when this is dropped — by a
/// dump once the tree no longer waits frozen (freeing a large page file takes a while).
pub struct Replaced(Option<PathBuf>);

impl Drop for Replaced {
    fn drop(&mut self) {
        if let Some(aside) = self.0.take() {
            let _ = fs::remove_dir_all(aside);
        }
    }
}

/// Writes the files of one image.
pub struct ImageWriter {
    dir: PathBuf,
    files: Vec<FileDigest>,
    /// Set: the files go to this sink instead of `dir` (see [`ImageWriter::to_sink`]).
    sink: Option<SharedSink>,
    next_id: AtomicU32,
    /// Files whose blocks were allocated ahead ([`ImageWriter::reserve`]): name → (temporary
    /// path, file, bytes allocated).
    reserved: std::collections::HashMap<String, (PathBuf, File, u64)>,
    /// Where the files are written until the commit moves them into `dir`.
    staging: PathBuf,
    /// `staging` was created by this writer (and is removed with it unless committed).
    staging_made: bool,
    /// `dir` did not exist before: removed again (if empty) unless the image is committed.
    dir_made: bool,
    /// `dir`, locked (`flock`) for the writer's life; `None` for a sink.
    _lock: Option<File>,
    committed: bool,
    /// Sign the image with this key at commit (`dump --sign`; directories only).
    signer: Option<SigningKey>,
}

/// A file being streamed into the image (page data), checksummed as it is written.
pub struct StreamFile {
    name: String,
    tmp: PathBuf,
    dst: PathBuf,
    file: Option<File>,
    sink: Option<(SharedSink, u32)>,
    hasher: crc32fast::Hasher,
    /// The file's BLAKE3 digest, fed every byte in order on the writing thread (boxed: its
    /// state is ~2 KiB).
    b3: Box<blake3::Hasher>,
    len: u64,
    /// Bytes of blocks allocated ahead of the writes (0: none).
    reserved: u64,
    /// Finished (fsynced, waiting in the staging directory for the commit): kept.
    done: bool,
    /// Writes fail (fault injection: `FERRY_FAULT=fail-write:NAME`).
    fail: bool,
}

impl Drop for StreamFile {
    /// A file abandoned half-written (the dump failed) is removed at once, with any blocks
    /// reserved for it (the rest of the staging directory goes with the writer).
    fn drop(&mut self) {
        if !self.done && self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl StreamFile {
    fn put(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.fail {
            return Err(injected_full());
        }
        match (&mut self.file, &self.sink) {
            (Some(f), _) => f.write_all(buf),
            (None, Some((s, id))) => sink_lock(s).data(*id, buf),
            (None, None) => Err(io::Error::other("stream already finished")),
        }
    }

    /// Append bytes.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.put(buf)?;
        self.hasher.update(buf);
        self.b3.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Append `bufs` in order, whose CRC-32 the caller already computed (`crc`, fed exactly
    /// these bytes in this order) — e.g. on another thread, while the bytes were in its cache.
    /// (Their BLAKE3 digest is computed here: it cannot be split between threads and combined.)
    pub fn write_all_prehashed(&mut self, bufs: &[&[u8]], crc: &crc32fast::Hasher) -> io::Result<()> {
        for buf in bufs {
            self.put(buf)?;
            self.b3.update(buf);
            self.len += buf.len() as u64;
        }
        self.hasher.combine(crc);
        Ok(())
    }

    /// The file being written, when the image goes to a directory (not to a sink) — e.g. for
    /// another thread to allocate its blocks ahead of the writes.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Bytes written so far (the offset the next write lands at).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path in the image directory (what error messages name).
    pub fn path(&self) -> &Path {
        &self.dst
    }
}

/// So that encoders (e.g. zstd's) can write into a stream file.
impl Write for StreamFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ImageWriter {
    /// Same as [`ImageWriter::prepare`].
    pub fn create(dir: &Path) -> Result<ImageWriter, ImageError> {
        ImageWriter::prepare(dir)
    }

    /// A writer for `dir` (created 0700 if missing; made 0700 at the commit). An older image
    /// there stays untouched until [`ImageWriter::commit`] replaces it; what earlier dumps
    /// killed midway left there is removed now. Refused while another dump writes into `dir`.
    pub fn prepare(dir: &Path) -> Result<ImageWriter, ImageError> {
        let dir_made = match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(write_err("create", dir)(e)),
        };
        // From here on, dropping the writer removes what it created.
        let mut w = ImageWriter {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            sink: None,
            next_id: AtomicU32::new(0),
            reserved: Default::default(),
            staging: dir.join(format!("{STAGING}{}", std::process::id())),
            staging_made: false,
            dir_made,
            _lock: None,
            committed: false,
            signer: None,
        };
        let lock = File::open(dir).map_err(write_err("open", dir))?;
        let locked = match lock.try_lock() {
            Ok(()) => true,
            Err(fs::TryLockError::WouldBlock) => {
                return Err(ImageError::Invalid {
                    file: dir.display().to_string(),
                    what: "another ferry dump is writing into this directory".into(),
                })
            }
            // (A file system without flock: no guard against a concurrent dump, and no
            // cleaning, which could take the files of one.)
            Err(fs::TryLockError::Error(_)) => false,
        };
        w._lock = Some(lock);
        if locked {
            w.remove_stale();
        }
        fs::DirBuilder::new().mode(0o700).create(&w.staging).map_err(write_err("create files in", dir))?;
        w.staging_made = true;
        Ok(w)
    }

    /// Remove what dumps killed midway left in the directory: their staging directories, the
    /// older image's files a commit had moved aside, and the `.NAME.tmp` files of older ferry
    /// versions. (Called with the directory locked: no live dump owns any of them.)
    fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if name.starts_with(STAGING) || name.starts_with(ASIDE) {
                let _ = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            } else if !is_dir
                && name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).is_some_and(is_image_file_name)
            {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Write the image to `sink` instead of a directory (nothing touches a disk).
    pub fn to_sink(sink: Arc<Mutex<dyn ImageSink>>) -> ImageWriter {
        ImageWriter {
            dir: PathBuf::from("<stream>"),
            files: Vec::new(),
            sink: Some(sink),
            next_id: AtomicU32::new(0),
            reserved: Default::default(),
            staging: PathBuf::new(),
            staging_made: false,
            dir_made: false,
            _lock: None,
            committed: false,
            signer: None,
        }
    }

    /// Sign the image with `key` when it is committed (`signature.img`; a directory only: a
    /// migration stream is authenticated by its channel).
    pub fn sign_with(&mut self, key: SigningKey) {
        self.signer = Some(key);
    }

    /// Whether a file of this name was already written to the image.
    pub fn has_file(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name)
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create file `name` in the staging directory: (its path there, its path in the image, it).
    fn open_tmp(&self, name: &str) -> Result<(PathBuf, PathBuf, File), ImageError> {
        let dst = self.dir.join(name);
        let tmp = self.staging.join(name);
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err("create", &dst))?;
        Ok((tmp, dst, file))
    }

    /// Write a whole file atomically.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let mut f = self.stream(name)?;
        f.write_all(bytes).map_err(write_err("write", &f.dst))?;
        self.finish_stream(f)
    }

    /// Write a process record.
    pub fn write_process(&mut self, p: &Process) -> Result<(), ImageError> {
        let bytes = encode_record(RecordKind::Process, p);
        self.write_file(&crate::process_file(p.pid), &bytes)
    }

    /// Allocate `len` bytes of blocks for file `name` now, before it is written — before the
    /// process is frozen: allocating (and zeroing) pages is most of what writing to a fresh
    /// tmpfs file costs, and the writes into allocated blocks then only copy. What the file does
    /// not use is released when it is finished; a reservation that is never streamed is removed
    /// with the writer. Best effort (a file system without `fallocate` gets plain writes); only
    /// for a directory (a sink has no blocks).
    pub fn reserve(&mut self, name: &str, len: u64) -> Result<(), ImageError> {
        if self.sink.is_some() || len == 0 || self.reserved.contains_key(name) {
            return Ok(());
        }
        let (tmp, _, file) = self.open_tmp(name)?;
        // (A failure may leave part of the range allocated on some file systems: the whole
        // range is still given back at the end.)
        let _ = ferry_sys::pagebuf::preallocate(std::os::fd::AsFd::as_fd(&file), 0, len);
        self.reserved.insert(name.to_string(), (tmp, file, len));
        Ok(())
    }

    /// Start streaming a file.
    pub fn stream(&mut self, name: &str) -> Result<StreamFile, ImageError> {
        let fail = fault("fail-write", name);
        if let Some(s) = &self.sink {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let dst = self.dir.join(name);
            sink_lock(s).begin(id, name).map_err(write_err("send", &dst))?;
            return Ok(StreamFile {
                name: name.to_string(),
                tmp: dst.clone(),
                dst,
                file: None,
                sink: Some((s.clone(), id)),
                hasher: crc32fast::Hasher::new(),
                b3: Box::new(blake3::Hasher::new()),
                len: 0,
                reserved: 0,
                done: false,
                fail,
            });
        }
        let (tmp, dst, file, reserved) = match self.reserved.remove(name) {
            Some((tmp, file, len)) => (tmp, self.dir.join(name), file, len),
            None => {
                let (tmp, dst, file) = self.open_tmp(name)?;
                (tmp, dst, file, 0)
            }
        };
        Ok(StreamFile {
            name: name.to_string(),
            tmp,
            dst,
            file: Some(file),
            sink: None,
            hasher: crc32fast::Hasher::new(),
            b3: Box::new(blake3::Hasher::new()),
            len: 0,
            reserved,
            done: false,
            fail,
        })
    }

    /// Flush and fsync a streamed file, recording its digest (it moves into place at the
    /// commit).
    pub fn finish_stream(&mut self, mut f: StreamFile) -> Result<(), ImageError> {
        let crc32 = f.hasher.clone().finalize();
        if let Some(file) = &f.file {
            if f.reserved > f.len {
                // Give back the blocks reserved beyond what was written (best effort: they
                // would only waste space).
                let _ = ferry_sys::pagebuf::release(std::os::fd::AsFd::as_fd(file), f.len, f.reserved - f.len);
            }
            file.sync_all().map_err(write_err("write", &f.dst))?;
            f.done = true;
        } else if let Some((s, id)) = &f.sink {
            sink_lock(s).end(*id, f.len, crc32).map_err(write_err("send", &f.dst))?;
        }
        let blake3 = f.b3.finalize().as_bytes().to_vec();
        self.files.push(FileDigest { name: std::mem::take(&mut f.name), size: f.len, crc32, blake3 });
        Ok(())
    }

    /// Write the inventory, then replace whatever image the directory held with this one (see
    /// the module doc), making it complete. The older image's files go when the returned
    /// [`Replaced`] is dropped.
    pub fn commit(mut self, mut inventory: Inventory) -> Result<Replaced, ImageError> {
        inventory.format_version = crate::FORMAT_VERSION;
        inventory.files = std::mem::take(&mut self.files);
        let bytes = encode_record(RecordKind::Inventory, &inventory);
        if let Some(s) = &self.sink {
            sink_lock(s).commit(&bytes).map_err(write_err("send", &self.dir.join(INVENTORY)))?;
            return Ok(Replaced(None));
        }
        let (_, dst, mut file) = self.open_tmp(INVENTORY)?;
        if fault("fail-write", INVENTORY) {
            return Err(write_err("write", &dst)(injected_full()));
        }
        file.write_all(&bytes).map_err(write_err("write", &dst))?;
        file.sync_all().map_err(write_err("write", &dst))?;
        drop(file);
        let mut names: Vec<&str> = inventory.files.iter().map(|f| f.name.as_str()).collect();
        // The signature goes in before the inventory, which makes the image complete. (Without
        // a signer, one left by an older image goes aside with the rest of it.)
        if let Some(key) = &self.signer {
            let digest = *blake3::hash(&bytes).as_bytes();
            let sig_path = self.dir.join(SIGNATURE);
            let sig = key
                .sign(&crate::sign::signed_message(&digest))
                .map_err(|e| write_err("sign", &sig_path)(io::Error::other(format!("no random bytes: {e}"))))?;
            let rec = ImageSignature {
                scheme: crate::sign::SCHEME.into(),
                public_key: key.public().to_vec(),
                digest: digest.to_vec(),
                signature: sig.to_vec(),
            };
            let (_, sdst, mut sfile) = self.open_tmp(SIGNATURE)?;
            sfile.write_all(&encode_record(RecordKind::Signature, &rec)).map_err(write_err("write", &sdst))?;
            sfile.sync_all().map_err(write_err("write", &sdst))?;
            names.push(SIGNATURE);
        }
        names.push(INVENTORY);
        let aside = self.swap_in(&names)?;
        self.committed = true;
        let _ = fs::remove_dir(&self.staging); // (empty now)
        Ok(Replaced(aside))
    }

    /// The files of the image `dir` holds now (or of what is left of one): the files its
    /// inventory lists, and any other file named like an image file; the inventory first.
    fn older_files(&self) -> Vec<String> {
        let listed: Vec<String> = fs::read(self.dir.join(INVENTORY))
            .ok()
            .and_then(|b| decode_record::<Inventory>(INVENTORY, RecordKind::Inventory, &b).ok())
            .map(|inv| inv.files.into_iter().map(|f| f.name).collect())
            .unwrap_or_default();
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut old: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && (is_image_file_name(n) || (n.ends_with(".img") && listed.contains(n))))
            .collect();
        old.sort_by_key(|n| (n.as_str() != INVENTORY, n.clone()));
        old
    }

    /// Move the older image's files aside (its inventory first), the staged `names` in (the
    /// inventory last) and fsync the directory; returns where the older files are, if any. On a
    /// failure, every move made is undone in reverse order, so `dir` holds the older image as it
    /// was.
    fn swap_in(&self, names: &[&str]) -> Result<Option<PathBuf>, ImageError> {
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(write_err("set the mode of", &self.dir))?;
        let old = self.older_files();
        let aside = self.dir.join(format!("{ASIDE}{}", std::process::id()));
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        let r = (|| -> Result<(), ImageError> {
            if !old.is_empty() {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&aside)
                    .map_err(write_err("move aside the older image in", &self.dir))?;
            }
            for n in &old {
                let (from, to) = (self.dir.join(n), aside.join(n));
                fs::rename(&from, &to).map_err(write_err("move aside", &from))?;
                moved.push((from, to));
            }
            for n in names {
                let (from, to) = (self.staging.join(n), self.dir.join(n));
                if fault("fail-move", n) {
                    return Err(write_err("move into place", &to)(io::Error::other("injected by FERRY_FAULT")));
                }
                fs::rename(&from, &to).map_err(write_err("move into place", &to))?;
                moved.push((from, to));
            }
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(write_err("write", &self.dir))
        })();
        if let Err(e) = r {
            for (from, to) in moved.iter().rev() {
                let _ = fs::rename(to, from);
            }
            let _ = fs::remove_dir(&aside);
            let _ = File::open(&self.dir).and_then(|d| d.sync_all());
            return Err(e);
        }
        Ok((!old.is_empty()).then_some(aside))
    }
}

impl Drop for ImageWriter {
    /// An image never committed (the dump failed): everything it created goes — the staging
    /// directory with the reservations and files in it, and the image directory if it made it
    /// and nothing else is in it.
    fn drop(&mut self) {
        self.reserved.clear();
        if self.committed || self.sink.is_some() {
            return;
        }
        if self.staging_made {
            let _ = fs::remove_dir_all(&self.staging);
        }
        if self.dir_made {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
#[path = "dir_writer_tests.rs"]
mod writer_tests;
/// Open a file of an image for reading, refusing anything but a regular file: a FIFO would
/// block `open` (or `read`) forever, a device could be read without end or with side effects,
/// and a symbolic link could point anywhere. The open itself cannot block (`O_NONBLOCK`, which
/// is cleared again once the file is known to be regular; `O_NOFOLLOW`; `O_NOCTTY`).
pub fn open_regular(path: &Path) -> Result<File, ImageError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path);
    check_regular(opened, path)
}

/// [`open_regular`] of `name` in the directory `dir` is open on (`path`: for messages).
fn open_regular_at(dir: &std::os::fd::OwnedFd, name: &str, path: &Path) -> Result<File, ImageError> {
    let opened = std::ffi::CString::new(name)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
        .and_then(|c| {
            ferry_sys::ns::openat(
                std::os::fd::AsFd::as_fd(dir),
                &c,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        })
        .map(File::from);
    check_regular(opened, path)
}

fn check_regular(opened: io::Result<File>, path: &Path) -> Result<File, ImageError> {
    let file = path.display().to_string();
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ImageError::NotRegular { file, what: "a symbolic link" })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ImageError::Missing { file }),
        Err(e) => return Err(ImageError::Io { file, source: e }),
    };
    let t = f.metadata().map_err(io_err(path))?.file_type();
    if !t.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_dir() {
            "a directory"
        } else {
            "something else"
        };
        return Err(ImageError::NotRegular { file, what });
    }
    ferry_sys::process::set_status_flags(std::os::fd::AsFd::as_fd(&f), 0).map_err(io_err(path))?;
    Ok(f)
}

/// Largest record file: its header and the largest payload accepted.
const RECORD_FILE_MAX: u64 = crate::HEADER_LEN as u64 + crate::MAX_RECORD_LEN;

/// Read a record file whole, refusing one larger than a record can be before reading it (a
/// huge or sparse file would be read into memory first, and a read of many gigabytes fail
/// with an allocation abort rather than an error).
fn read_record(f: File, path: &Path) -> Result<Vec<u8>, ImageError> {
    let len = f.metadata().map_err(io_err(path))?.len();
    if len > RECORD_FILE_MAX {
        return Err(ImageError::TooLarge { file: path.display().to_string(), len });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // (at most one byte more than the limit, should the file grow meanwhile: decode_record
    // refuses it then)
    f.take(RECORD_FILE_MAX + 1).read_to_end(&mut bytes).map_err(io_err(path))?;
    Ok(bytes)
}

/// Reads a complete image, verifying every file before anything is handed out.
#[derive(Clone)]
pub struct ImageReader {
    dir: PathBuf,
    /// The directory, open: files are opened relative to it, so the reader keeps working
    /// after ferry moved into a tree's mount namespace (state/mounts.rs).
    dir_fd: Option<Arc<std::os::fd::OwnedFd>>,
    inventory: Inventory,
    /// BLAKE3 of the whole `inventory.img`: the image digest.
    digest: [u8; 32],
}

impl ImageReader {
    /// Open `dir` and check the inventory's magic, version and checksum.
    pub fn open(dir: &Path) -> Result<ImageReader, ImageError> {
        let inv_path = dir.join(INVENTORY);
        let bytes = match open_regular(&inv_path) {
            Ok(f) => read_record(f, &inv_path)?,
            Err(ImageError::Missing { .. }) => {
                if dir.is_dir() {
                    return Err(ImageError::Incomplete { dir: dir.display().to_string() });
                }
                return Err(io_err(dir)(io::Error::from(io::ErrorKind::NotFound)));
            }
            Err(e) => return Err(e),
        };
        let inventory: Inventory = decode_record(&inv_path.display().to_string(), RecordKind::Inventory, &bytes)?;
        for f in &inventory.files {
            if f.name.contains('/') || f.name.starts_with('.') || f.name.is_empty() || f.name == SIGNATURE {
                return Err(ImageError::Invalid {
                    file: inv_path.display().to_string(),
                    what: format!("bad file name {:?}", f.name),
                });
            }
            if !f.blake3.is_empty() && f.blake3.len() != 32 {
                return Err(ImageError::Invalid {
                    file: inv_path.display().to_string(),
                    what: format!("{}: BLAKE3 digest of {} bytes", f.name, f.blake3.len()),
                });
            }
        }
        let digest = *blake3::hash(&bytes).as_bytes();
        let dir_fd = File::open(dir).ok().map(|f| Arc::new(std::os::fd::OwnedFd::from(f)));
        Ok(ImageReader { dir: dir.to_path_buf(), dir_fd, inventory, digest })
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The image digest: the BLAKE3 hash of the whole `inventory.img`, which lists every other
    /// file with its size and BLAKE3 digest (so it covers the image, once every file is
    /// verified). This is what a signature signs.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Path of a file of the image.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The signature record (`signature.img`), if the image has one.
    pub fn signature(&self) -> Result<Option<ImageSignature>, ImageError> {
        let path = self.dir.join(SIGNATURE);
        let mut f = match open_regular(&path) {
            Ok(f) => f,
            Err(ImageError::Missing { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata().map_err(io_err(&path))?.len();
        if len > 4096 {
            return Err(ImageError::TooLarge { file: path.display().to_string(), len });
        }
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(io_err(&path))?;
        decode_record(&path.display().to_string(), RecordKind::Signature, &bytes).map(Some)
    }

    /// Check that the image is signed by one of the `trusted` X25519 public keys (a node's
    /// `trusted` list), and that every file it lists carries a BLAKE3 digest (which
    /// [`ImageReader::verify_where`] then checks). Returns the signer's key.
    pub fn verify_signature(&self, trusted: &[[u8; 32]]) -> Result<[u8; 32], ImageError> {
        let path = self.dir.join(SIGNATURE).display().to_string();
        let sig = self.signature()?.ok_or_else(|| ImageError::Unsigned { dir: self.dir.display().to_string() })?;
        let (Ok(key), Ok(bytes)) =
            (<[u8; 32]>::try_from(sig.public_key.as_slice()), <[u8; 64]>::try_from(sig.signature.as_slice()))
        else {
            return Err(ImageError::Invalid { file: path, what: "malformed key or signature".into() });
        };
        if sig.scheme != crate::sign::SCHEME {
            return Err(ImageError::Invalid { file: path, what: format!("unknown signature scheme {:?}", sig.scheme) });
        }
        if !trusted.contains(&key) {
            return Err(ImageError::Untrusted { file: path, key: crate::hex::hex(&key) });
        }
        if !crate::sign::verify(&key, &crate::sign::signed_message(&self.digest), &bytes) {
            return Err(ImageError::BadSignature { file: path });
        }
        if let Some(f) = self.inventory.files.iter().find(|f| f.blake3.is_empty()) {
            return Err(ImageError::Invalid {
                file: self.dir.join(INVENTORY).display().to_string(),
                what: format!("{} has no BLAKE3 digest: the signature does not cover it", f.name),
            });
        }
        Ok(key)
    }

    /// The inventory's entry for file `name`.
    fn listed(&self, name: &str) -> Result<&FileDigest, ImageError> {
        self.inventory
            .files
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ImageError::Missing { file: self.dir.join(name).display().to_string() })
    }

    /// Open a file listed in the inventory: a regular file of the listed size.
    pub fn open_file(&self, name: &str) -> Result<File, ImageError> {
        let path = self.dir.join(name);
        let pname = path.display().to_string();
        let d = self.listed(name)?;
        let f = match &self.dir_fd {
            Some(dir) => open_regular_at(dir, name, &path)?,
            None => open_regular(&path)?,
        };
        let size = f.metadata().map_err(io_err(&path))?.len();
        if size != d.size {
            return Err(ImageError::Truncated { file: pname, expected: d.size, found: size });
        }
        Ok(f)
    }

    /// Check every listed file is a regular file of the listed size (without reading it).
    pub fn check_sizes(&self) -> Result<(), ImageError> {
        for d in &self.inventory.files {
            self.open_file(&d.name)?;
        }
        Ok(())
    }

    /// Check every listed file's size and checksum (reads all page data once).
    pub fn verify_all(&self) -> Result<(), ImageError> {
        self.verify_where(|_| true)
    }

    /// Check the size, CRC-32 and BLAKE3 digest (when the inventory has one) of every listed
    /// file for which `which(name)` is true (restore checks the small record files first and
    /// the page files on another core meanwhile), in one read of each.
    pub fn verify_where(&self, which: impl Fn(&str) -> bool) -> Result<(), ImageError> {
        // Read into a page-aligned part of the buffer: the kernel's copy into a destination
        // 16 bytes off a page boundary (as malloc returns large blocks) was measured 3.5 times
        // slower on AMD EPYC.
        let mut block = vec![0u8; (1 << 20) + 4096];
        let at = block.as_ptr().align_offset(4096).min(4096);
        let buf = &mut block[at..at + (1 << 20)];
        for d in self.inventory.files.iter().filter(|d| which(&d.name)) {
            let path = self.dir.join(&d.name);
            let name = path.display().to_string();
            let mut f = self.open_file(&d.name)?;
            let mut h = crc32fast::Hasher::new();
            let mut b3 = blake3::Hasher::new();
            let mut len = 0u64;
            loop {
                let n = f.read(buf).map_err(io_err(&path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                if !d.blake3.is_empty() {
                    b3.update(&buf[..n]);
                }
                len += n as u64;
            }
            if len != d.size {
                return Err(ImageError::Truncated { file: name, expected: d.size, found: len });
            }
            check_digests(d, &name, h.finalize(), &b3)?;
        }
        Ok(())
    }

    /// Read a whole (small) file listed in the inventory, checking its digests.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.dir.join(name);
        let pname = path.display().to_string();
        let mut f = self.open_file(name)?;
        let d = self.listed(name)?;
        let mut bytes = Vec::with_capacity(d.size.min(MAX_PREALLOC) as usize);
        (&mut f).take(d.size + 1).read_to_end(&mut bytes).map_err(io_err(&path))?;
        if bytes.len() as u64 != d.size {
            return Err(ImageError::Truncated { file: pname, expected: d.size, found: bytes.len() as u64 });
        }
        let mut b3 = blake3::Hasher::new();
        if !d.blake3.is_empty() {
            b3.update(&bytes);
        }
        check_digests(d, &pname, crc32fast::hash(&bytes), &b3)?;
        Ok(bytes)
    }

    /// Read and decode the record of process `pid`.
    pub fn read_process(&self, pid: i32) -> Result<Process, ImageError> {
        let name = crate::process_file(pid);
        if let Some(len) = self.file_size(&name).filter(|&l| l > RECORD_FILE_MAX) {
            return Err(ImageError::TooLarge { file: self.dir.join(&name).display().to_string(), len });
        }
        let bytes = self.read_file(&name)?;
        decode_record(&self.dir.join(&name).display().to_string(), RecordKind::Process, &bytes)
    }

    /// Size recorded in the inventory for a file.
    pub fn file_size(&self, name: &str) -> Option<u64> {
        self.inventory.files.iter().find(|d| d.name == name).map(|d| d.size)
    }
}

/// Most memory reserved ahead for a file read whole (its size comes from the inventory).
const MAX_PREALLOC: u64 = 64 << 20;

/// Compare a file's digests with the inventory's: the BLAKE3 digest first (when there is one:
/// it is what a tampered file with a fixed-up CRC fails), then the CRC-32.
fn check_digests(d: &FileDigest, name: &str, crc32: u32, b3: &blake3::Hasher) -> Result<(), ImageError> {
    if !d.blake3.is_empty() && b3.finalize().as_bytes()[..] != d.blake3[..] {
        return Err(ImageError::Digest { file: name.to_string() });
    }
    if crc32 != d.crc32 {
        return Err(ImageError::Checksum { file: name.to_string() });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sign::SigningKey;

    fn tmpdir(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-image-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn write(dir: &Path, key: Option<SigningKey>) {
        // (Another test of this process that forks at the moment the previous writer of `dir`
        // is dropped holds a copy of its locked fd until its exec: wait for that to pass.)
        let mut tries = 0;
        let mut w = loop {
            match ImageWriter::create(dir) {
                Err(ImageError::Invalid { what, .. }) if what.contains("another ferry dump") && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        if let Some(k) = key {
            w.sign_with(k);
        }
        w.write_file("pages-1.img", &vec![7u8; 3 * 4096]).unwrap();
        w.commit(Inventory { root_pid: 1, ..Default::default() }).unwrap();
    }

    #[test]
    fn signed_image_verifies_and_tampering_is_caught() {
        let dir = tmpdir("signed");
        let key = SigningKey::from_bytes([9; 32]);
        write(&dir, Some(key.clone()));
        let r = ImageReader::open(&dir).unwrap();
        assert_eq!(r.verify_signature(&[key.public()]).unwrap(), key.public());
        r.verify_all().unwrap();
        let other = SigningKey::from_bytes([10; 32]).public();
        assert!(matches!(r.verify_signature(&[other]), Err(ImageError::Untrusted { .. })));
        // One byte changed: the CRC fixed up is not enough.
        let p = dir.join("pages-1.img");
        let mut b = fs::read(&p).unwrap();
        b[5000] ^= 1;
        fs::write(&p, &b).unwrap();
        let mut inv = r.inventory().clone();
        inv.files[0].crc32 = crc32fast::hash(&b);
        assert!(matches!(r.verify_all(), Err(ImageError::Digest { .. })));
        // Digests fixed up too: the signature no longer matches the inventory.
        inv.files[0].blake3 = blake3::hash(&b).as_bytes().to_vec();
        fs::write(dir.join(INVENTORY), encode_record(RecordKind::Inventory, &inv)).unwrap();
        let r = ImageReader::open(&dir).unwrap();
        r.verify_all().unwrap();
        assert!(matches!(r.verify_signature(&[key.public()]), Err(ImageError::BadSignature { .. })));
        // Unsigned, written again into the same directory: the old signature goes.
        write(&dir, None);
        let r = ImageReader::open(&dir).unwrap();
        assert!(matches!(r.verify_signature(&[key.public()]), Err(ImageError::Unsigned { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let dir = tmpdir("fifo");
        write(&dir, None);
        let p = dir.join("pages-1.img");
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let r = ImageReader::open(&dir).unwrap();
        assert!(matches!(r.verify_all(), Err(ImageError::NotRegular { what: "a symbolic link", .. })));
        fs::remove_file(&p).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(&p).status().unwrap().success());
        assert!(matches!(r.verify_all(), Err(ImageError::NotRegular { what: "a FIFO", .. })));
        assert!(matches!(r.open_file("pages-1.img"), Err(ImageError::NotRegular { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod record_size_tests {
    use super::*;
    use crate::FileDigest;

    fn scratch(what: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-image-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch directory");
        d
    }

    fn sparse(path: &Path, len: u64) {
        File::create(path).and_then(|f| f.set_len(len)).expect("sparse file");
    }

    #[test]
    fn an_inventory_larger_than_a_record_is_refused_before_it_is_read() {
        // (Read whole, a sparse inventory.img of many gigabytes aborted ferry on the allocation.)
        let dir = scratch("big-inventory");
        sparse(&dir.join(INVENTORY), RECORD_FILE_MAX + 1);
        let r = ImageReader::open(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{:?}", r.err());
    }

    #[test]
    fn a_process_record_larger_than_a_record_is_refused_before_it_is_read() {
        let dir = scratch("big-process");
        let inv = Inventory {
            pids: vec![1],
            root_pid: 1,
            files: vec![FileDigest {
                name: crate::process_file(1),
                size: RECORD_FILE_MAX + 1,
                crc32: 0,
                blake3: Vec::new(),
            }],
            ..Default::default()
        };
        fs::write(dir.join(INVENTORY), encode_record(RecordKind::Inventory, &inv)).expect("inventory");
        sparse(&dir.join(crate::process_file(1)), RECORD_FILE_MAX + 1);
        let r = ImageReader::open(&dir).and_then(|img| img.read_process(1));
        let _ = fs::remove_dir_all(&dir);
        assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{:?}", r.err());
    }
}
