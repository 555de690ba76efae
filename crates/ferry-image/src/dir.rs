//! Writing and reading an image directory atomically.
//!
//! Each file is written under a `.tmp` name, fsynced and renamed; `inventory.img` (with every
//! file's size and checksum) is renamed into place last and the directory fsynced, so a crash
//! at any point leaves either the previous state or a complete, verifiable image — never a
//! complete-looking half image. Files are created mode 0600 and the directory 0700: images
//! hold process memory, which means secrets.

use crate::{decode_record, encode_record, FileDigest, ImageError, Inventory, Process, RecordKind, INVENTORY};
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
}

/// A file being streamed into the image (page data), checksummed as it is written.
pub struct StreamFile {
    name: String,
    tmp: PathBuf,
    dst: PathBuf,
    file: Option<File>,
    sink: Option<(SharedSink, u32)>,
    hasher: crc32fast::Hasher,
    len: u64,
    /// Bytes of blocks allocated ahead of the writes (0: none).
    reserved: u64,
    /// Renamed into place: nothing to clean up.
    done: bool,
}

impl Drop for StreamFile {
    /// A file abandoned half-written (the dump failed) is removed, with any blocks reserved
    /// for it.
    fn drop(&mut self) {
        if !self.done && self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl StreamFile {
    /// Append bytes.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match (&mut self.file, &self.sink) {
            (Some(f), _) => f.write_all(buf)?,
            (None, Some((s, id))) => sink_lock(s).data(*id, buf)?,
            (None, None) => return Err(io::Error::other("stream already finished")),
        }
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Append `bufs` in order, whose CRC-32 the caller already computed (`crc`, fed exactly
    /// these bytes in this order) — e.g. on another thread, while the bytes were in its cache.
    pub fn write_all_prehashed(&mut self, bufs: &[&[u8]], crc: &crc32fast::Hasher) -> io::Result<()> {
        for buf in bufs {
            match (&mut self.file, &self.sink) {
                (Some(f), _) => f.write_all(buf)?,
                (None, Some((s, id))) => sink_lock(s).data(*id, buf)?,
                (None, None) => return Err(io::Error::other("stream already finished")),
            }
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
    /// Prepare `dir` (created 0700 if missing). An older image there is invalidated first by
    /// removing its inventory, so it can never be mixed with the new files.
    pub fn create(dir: &Path) -> Result<ImageWriter, ImageError> {
        let w = ImageWriter::prepare(dir)?;
        w.invalidate_old()?;
        Ok(w)
    }

    /// Remove the inventory of an older image in the directory (so that it can never be mixed
    /// with the new files) and make the directory 0700. [`ImageWriter::create`] does it at once;
    /// a writer from [`ImageWriter::prepare`] does it when the new image is sure to be written.
    pub fn invalidate_old(&self) -> Result<(), ImageError> {
        if self.sink.is_some() {
            return Ok(());
        }
        let inv = self.dir.join(INVENTORY);
        match fs::remove_file(&inv) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&inv)(e)),
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&self.dir))
    }

    /// A writer for `dir` (created 0700 if missing) that leaves an older image there alone
    /// until [`ImageWriter::invalidate_old`]; meanwhile files may be [reserved](Self::reserve).
    pub fn prepare(dir: &Path) -> Result<ImageWriter, ImageError> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
        Ok(ImageWriter {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            sink: None,
            next_id: AtomicU32::new(0),
            reserved: Default::default(),
        })
    }

    /// Write the image to `sink` instead of a directory (nothing touches a disk).
    pub fn to_sink(sink: Arc<Mutex<dyn ImageSink>>) -> ImageWriter {
        ImageWriter {
            dir: PathBuf::from("<stream>"),
            files: Vec::new(),
            sink: Some(sink),
            next_id: AtomicU32::new(0),
            reserved: Default::default(),
        }
    }

    /// Whether a file of this name was already written to the image.
    pub fn has_file(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name)
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_tmp(&self, name: &str) -> Result<(PathBuf, PathBuf, File), ImageError> {
        let dst = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
        Ok((tmp, dst, file))
    }

    /// Write a whole file atomically.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let mut f = self.stream(name)?;
        f.write_all(bytes).map_err(io_err(&f.tmp))?;
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
        if let Some(s) = &self.sink {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let dst = self.dir.join(name);
            sink_lock(s).begin(id, name).map_err(io_err(&dst))?;
            return Ok(StreamFile {
                name: name.to_string(),
                tmp: dst.clone(),
                dst,
                file: None,
                sink: Some((s.clone(), id)),
                hasher: crc32fast::Hasher::new(),
                len: 0,
                reserved: 0,
                done: false,
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
            len: 0,
            reserved,
            done: false,
        })
    }

    /// Flush, fsync and rename a streamed file into place, recording its digest.
    pub fn finish_stream(&mut self, mut f: StreamFile) -> Result<(), ImageError> {
        let crc32 = f.hasher.clone().finalize();
        if let Some(file) = &f.file {
            if f.reserved > f.len {
                // Give back the blocks reserved beyond what was written (best effort: they
                // would only waste space).
                let _ = ferry_sys::pagebuf::release(std::os::fd::AsFd::as_fd(file), f.len, f.reserved - f.len);
            }
            file.sync_all().map_err(io_err(&f.tmp))?;
            fs::rename(&f.tmp, &f.dst).map_err(io_err(&f.dst))?;
            f.done = true;
        } else if let Some((s, id)) = &f.sink {
            sink_lock(s).end(*id, f.len, crc32).map_err(io_err(&f.dst))?;
        }
        self.files.push(FileDigest { name: std::mem::take(&mut f.name), size: f.len, crc32 });
        Ok(())
    }

    /// Write the inventory last, making the image complete.
    pub fn commit(mut self, mut inventory: Inventory) -> Result<(), ImageError> {
        inventory.format_version = crate::FORMAT_VERSION;
        inventory.files = std::mem::take(&mut self.files);
        let bytes = encode_record(RecordKind::Inventory, &inventory);
        if let Some(s) = &self.sink {
            return sink_lock(s).commit(&bytes).map_err(io_err(&self.dir.join(INVENTORY)));
        }
        let (tmp, dst, mut file) = self.open_tmp(INVENTORY)?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        Ok(())
    }
}

impl Drop for ImageWriter {
    /// Reservations never streamed (the dump failed, or the process had fewer pages).
    fn drop(&mut self) {
        for (_, (tmp, _, _)) in self.reserved.drain() {
            let _ = fs::remove_file(tmp);
        }
    }
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
    inventory: Inventory,
}

impl ImageReader {
    /// Open `dir` and check the inventory's magic, version and checksum.
    pub fn open(dir: &Path) -> Result<ImageReader, ImageError> {
        let inv_path = dir.join(INVENTORY);
        let bytes = match File::open(&inv_path) {
            Ok(f) => read_record(f, &inv_path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if dir.is_dir() {
                    return Err(ImageError::Incomplete { dir: dir.display().to_string() });
                }
                return Err(io_err(dir)(e));
            }
            Err(e) => return Err(io_err(&inv_path)(e)),
        };
        let inventory: Inventory = decode_record(&inv_path.display().to_string(), RecordKind::Inventory, &bytes)?;
        for f in &inventory.files {
            if f.name.contains('/') || f.name.starts_with('.') || f.name.is_empty() {
                return Err(ImageError::Invalid {
                    file: inv_path.display().to_string(),
                    what: format!("bad file name {:?}", f.name),
                });
            }
        }
        Ok(ImageReader { dir: dir.to_path_buf(), inventory })
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Path of a file of the image.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Check every listed file's size and checksum (reads all page data once).
    pub fn verify_all(&self) -> Result<(), ImageError> {
        self.verify_where(|_| true)
    }

    /// Check the size and checksum of every listed file for which `which(name)` is true (restore
    /// checks the small record files first and the page files on another core meanwhile).
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
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ImageError::Missing { file: name }),
                Err(e) => return Err(io_err(&path)(e)),
            };
            let size = f.metadata().map_err(io_err(&path))?.len();
            if size != d.size {
                return Err(ImageError::Truncated { file: name, expected: d.size, found: size });
            }
            let mut h = crc32fast::Hasher::new();
            loop {
                let n = f.read(buf).map_err(io_err(&path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            if h.finalize() != d.crc32 {
                return Err(ImageError::Checksum { file: name });
            }
        }
        Ok(())
    }

    /// Read a whole (small) file listed in the inventory, checking its digest.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.dir.join(name);
        let pname = path.display().to_string();
        let d = self
            .inventory
            .files
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ImageError::Missing { file: pname.clone() })?;
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if bytes.len() as u64 != d.size {
            return Err(ImageError::Truncated { file: pname, expected: d.size, found: bytes.len() as u64 });
        }
        if crc32fast::hash(&bytes) != d.crc32 {
            return Err(ImageError::Checksum { file: pname });
        }
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

#[cfg(test)]
mod tests {
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
            files: vec![FileDigest { name: crate::process_file(1), size: RECORD_FILE_MAX + 1, crc32: 0 }],
            ..Default::default()
        };
        fs::write(dir.join(INVENTORY), encode_record(RecordKind::Inventory, &inv)).expect("inventory");
        sparse(&dir.join(crate::process_file(1)), RECORD_FILE_MAX + 1);
        let r = ImageReader::open(&dir).and_then(|img| img.read_process(1));
        let _ = fs::remove_dir_all(&dir);
        assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{:?}", r.err());
    }
}
