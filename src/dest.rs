//! DEST: preparing the target directory, vetting relative paths, writing files under it
//! without ever following a symlink, syncing it, and cleaning up after a failure.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag, AT_FDCWD};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Longest relative path accepted (bytes), like PostgreSQL's MAXPGPATH.
pub const MAX_PATH: usize = 1024;
/// Suffix of a file while it is being written; renamed away when complete.
pub const TMP_SUFFIX: &str = ".pgbb-tmp";

/// Write buffer of a file: smaller writes are gathered, chunks of this size or more (the
/// default chunk is 128 KiB) go straight to the kernel without a copy.
const WRITE_BUFFER: usize = 64 << 10;

/// Files from this size on start their write-back when finished (see [`Dest::writeback`]);
/// for small files one I/O request each cost more than it overlapped (measured on a
/// cluster of 20k small files: 5% of all CPU time in sync_file_range).
const WRITEBACK_FROM: u64 = 1 << 20;
/// Where `global/pg_control` waits until the backup has been proven complete.
pub const PG_CONTROL: &str = "global/pg_control";
pub const PG_CONTROL_PENDING: &str = "global/pg_control.pgbb-pending";

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute path (paths are relative to the data directory)")]
    Absolute,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path component {0:?} is not allowed")]
    BadComponent(String),
    #[error("path longer than {MAX_PATH} bytes")]
    TooLong,
}

#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error("destination {0} exists and is not empty (use -f/--force to replace it)")]
    NotEmpty(PathBuf),
    #[error("tablespace \"{name}\" would be copied to {target}, which exists and is not empty; map it elsewhere with -T {location}=NEWDIR")]
    TablespaceInTheWay { name: String, target: PathBuf, location: PathBuf },
    #[error("destination {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot create destination {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unsafe path {path:?}: {source}")]
    Unsafe {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("destination {} is in use by another pgbb run ({}); wait for it to end or choose another DEST", path.display(), pid.map_or("its pid is unknown".to_string(), |p| format!("pid {p}")))]
    InUse { path: PathBuf, pid: Option<i32> },
    #[error("refusing {role} {}: it {relation} {what} ({}); a backup must go outside the server's data directory, tablespaces and WAL directory: choose another path", path.display(), at.display())]
    Protected { role: &'static str, path: PathBuf, relation: &'static str, what: String, at: PathBuf },
    #[error("refusing {role} {}: {} belongs to a running PostgreSQL server (pid {pid}{}): it is a live data directory; choose another path", path.display(), pidfile.display(), if *own { ", the one pgbb is connected to" } else { "" })]
    LivePostmaster { role: &'static str, path: PathBuf, pidfile: PathBuf, pid: i32, own: bool },
    #[error("{path} in DEST is a symbolic link or not a directory; refusing to write through it")]
    NotADir { path: String },
    #[error("{}: {source}", describe_io(path, source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--delta`: DEST is not a copy pgbb may refresh.
    #[error(transparent)]
    Origin(#[from] crate::delta::origin::OriginError),
    /// Another operation on a path in DEST than writing a file: `cannot {action} {path}`.
    #[error("cannot {action} {}: {source}", path.display())]
    Op {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn describe_io(path: &Path, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        format!("no space left on device while writing {}", path.display())
    } else {
        format!("cannot write {}", path.display())
    }
}

impl DestError {
    pub fn is_no_space(&self) -> bool {
        matches!(self, DestError::Io { source, .. } | DestError::Op { source, .. } | DestError::Create { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// A vetted path relative to DEST: no `..`, no `.`, no empty component, not absolute, no NUL.
/// Raw bytes: file names need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePath {
    parts: Vec<Vec<u8>>,
}

impl SafePath {
    pub fn parse(s: impl AsRef<[u8]>) -> Result<SafePath, DestError> {
        let s = s.as_ref();
        Self::check(s).map_err(|source| DestError::Unsafe { path: crate::protocol::show(s), source })
    }

    fn check(s: &[u8]) -> Result<SafePath, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        if s.contains(&0) {
            return Err(PathError::Nul);
        }
        if s[0] == b'/' {
            return Err(PathError::Absolute);
        }
        let parts: Vec<Vec<u8>> = s.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
        for p in &parts {
            if p.is_empty() || p == b"." || p == b".." {
                return Err(PathError::BadComponent(crate::protocol::show(p)));
            }
        }
        Ok(SafePath { parts })
    }

    /// The path's bytes, components joined with `/`.
    pub fn as_bytes(&self) -> Vec<u8> {
        self.parts.join(&b'/')
    }

    /// The path as UTF-8, if it is.
    pub fn to_str(&self) -> Option<String> {
        String::from_utf8(self.as_bytes()).ok()
    }

    /// For messages.
    pub fn display(&self) -> String {
        crate::protocol::show(&self.as_bytes())
    }

    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(&self.as_bytes()))
    }

    pub fn file_name(&self) -> &[u8] {
        self.parts.last().map(Vec::as_slice).unwrap_or(b"")
    }

    /// The directory part (everything but the last component).
    pub fn parent_bytes(&self) -> Vec<u8> {
        self.dirs().join(&b'/')
    }

    fn dirs(&self) -> &[Vec<u8>] {
        &self.parts[..self.parts.len() - 1]
    }
}

/// A directory below DEST (its path components) and its open descriptor.
type CachedDir = (Vec<Vec<u8>>, Arc<OwnedFd>);

/// An open DEST directory. Every write goes through directory file descriptors opened with
/// `O_NOFOLLOW`, so a symlink planted inside DEST can never redirect a write outside it.
pub struct Dest {
    root: PathBuf,
    fd: OwnedFd,
    file_mode: Mode,
    dir_mode: Mode,
    /// Write files under their own names, not a temporary name renamed at the end (see
    /// [`Dest::in_place`]).
    in_place: bool,
    /// Start write-back of each file as it is finished (see [`Dest::writeback`]).
    writeback: bool,
    /// The directory the last file was created in: most files of a backup share one
    /// (`base/<db>`), and opening its path component by component for each file costs.
    last_dir: std::sync::Mutex<Option<CachedDir>>,
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Dest {
    pub fn open(root: &Path, group_access: bool) -> Result<Dest, DestError> {
        let fd = openat(AT_FDCWD, root, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| DestError::Io { path: root.to_path_buf(), source: errno_io(e) })?;
        let (file_mode, dir_mode) = if group_access {
            (Mode::from_bits_truncate(0o640), Mode::from_bits_truncate(0o750))
        } else {
            (Mode::from_bits_truncate(0o600), Mode::from_bits_truncate(0o700))
        };
        Ok(Dest {
            root: root.to_path_buf(),
            fd,
            file_mode,
            dir_mode,
            in_place: false,
            writeback: false,
            last_dir: Default::default(),
        })
    }

    /// Files are written under their final names, without the temporary name and rename that
    /// make each file appear whole. For the master's workers: the backup as a whole is made
    /// startable only by its last step (global/pg_control), and a failed backup is removed,
    /// so per-file atomicity buys nothing there and costs a rename under the directory lock
    /// per file (measured: ~5% of the client's CPU, and lock contention between workers).
    pub fn in_place(mut self, yes: bool) -> Dest {
        self.in_place = yes;
        self
    }

    /// Each finished file is handed to the kernel's write-back at once
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait), so that the disk
    /// writes overlap the copy and the master's final `syncfs` has little left to do. Only
    /// when someone will sync: with `--no-sync` the data may stay in the page cache.
    pub fn writeback(mut self, yes: bool) -> Dest {
        self.writeback = yes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// [`Dest::writeback`] for a file written in place (a `--delta` refresh), now complete at
    /// `size` bytes.
    pub fn start_writeback(&self, file: &fs::File, size: u64) {
        if self.writes_back(size) {
            start_writeback(file, 0, 0);
        }
    }

    /// [`Dest::start_writeback`] of bytes `off..off + len` only (one piece of a file that
    /// other workers write too).
    pub fn start_writeback_span(&self, file: &fs::File, off: u64, len: u64) {
        if self.writes_back(len) {
            start_writeback(file, off, len);
        }
    }

    /// Whether a file of `size` bytes is handed to write-back when complete.
    pub fn writes_back(&self, size: u64) -> bool {
        self.writeback && size >= WRITEBACK_FROM
    }

    fn io_err(&self, rel: &Path, e: Errno) -> DestError {
        DestError::Io { path: self.root.join(rel), source: errno_io(e) }
    }

    /// Opens (creating when `create`) each directory of `dirs` below the root, never following
    /// a symlink. Returns the descriptor of the last one.
    fn open_dirs(&self, dirs: &[Vec<u8>], create: bool) -> Result<OwnedFd, DestError> {
        let mut cur: Option<OwnedFd> = None;
        let mut sofar = PathBuf::new();
        for d in dirs {
            let d = d.as_slice();
            sofar.push(OsStr::from_bytes(d));
            let parent: BorrowedFd = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            let fd = match openat(parent, d, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(parent, d, self.dir_mode) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.io_err(&sofar, e)),
                    }
                    openat(parent, d, flags, Mode::empty()).map_err(|e| match e {
                        Errno::ELOOP | Errno::ENOTDIR => DestError::NotADir { path: sofar.display().to_string() },
                        e => self.io_err(&sofar, e),
                    })?
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(DestError::NotADir { path: sofar.display().to_string() })
                }
                Err(e) => return Err(self.io_err(&sofar, e)),
            };
            cur = Some(fd);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => self.fd.try_clone().map_err(|e| DestError::Io { path: self.root.clone(), source: e }),
        }
    }

    /// Creates file `name` in directory `dirs` (created as needed) with `flags`: the
    /// directory descriptor is cached for the next file; if the cached directory has been
    /// removed meanwhile (ENOENT), its path is opened again once.
    fn create_in(
        &self,
        dirs: &[Vec<u8>],
        name: &[u8],
        flags: OFlag,
        rel: &SafePath,
    ) -> Result<(Arc<OwnedFd>, fs::File), DestError> {
        let mut last = self.last_dir.lock().unwrap_or_else(|p| p.into_inner());
        let cached = last.as_ref().filter(|(path, _)| path.as_slice() == dirs).map(|(_, fd)| fd.clone());
        let open = |dir: &OwnedFd| openat(dir, name, flags, self.file_mode);
        let (dir, fd) = match cached.map(|d| (open(&d), d)) {
            Some((Ok(fd), d)) => (d, fd),
            Some((Err(e), _)) if e != Errno::ENOENT => return Err(self.io_err(&rel.to_path(), e)),
            _ => {
                let d = Arc::new(self.open_dirs(dirs, true)?);
                let fd = open(&d).map_err(|e| self.io_err(&rel.to_path(), e))?;
                *last = Some((dirs.to_vec(), d.clone()));
                (d, fd)
            }
        };
        Ok((dir, fs::File::from(fd)))
    }

    /// Creates a directory (and its parents) below DEST.
    pub fn create_dir_all(&self, rel: &SafePath) -> Result<(), DestError> {
        self.open_dirs(&rel.parts, true).map(drop)
    }

    /// Starts writing `rel`: the bytes go to a temporary name that [`FileWriter::finish`]
    /// renames into place, so an interrupted file never looks complete (in place: to `rel`
    /// itself, removed if the writer is dropped unfinished).
    pub fn create_file(&self, rel: &SafePath) -> Result<FileWriter, DestError> {
        let name = rel.file_name().to_vec();
        let mut tmp = name.clone();
        if !self.in_place {
            tmp.extend_from_slice(TMP_SUFFIX.as_bytes());
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let (dir, file) = self.create_in(rel.dirs(), &tmp, flags, rel)?;
        Ok(FileWriter {
            dir,
            tmp,
            name,
            path: self.root.join(rel.to_path()),
            file: Some(io::BufWriter::with_capacity(WRITE_BUFFER, file)),
            written: 0,
            piece: false,
            writeback: self.writeback,
        })
    }

    /// Starts writing bytes `offset..` of `rel`, into its temporary name, which is neither
    /// truncated nor renamed: several workers fill one file piece by piece, and the master
    /// renames it (see [`Dest::finish_pieces`]) once every piece is in.
    pub fn create_piece(&self, rel: &SafePath, offset: u64) -> Result<FileWriter, DestError> {
        use std::io::Seek;
        let name = rel.file_name().to_vec();
        let mut tmp = name.clone();
        tmp.extend_from_slice(TMP_SUFFIX.as_bytes());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let (dir, mut file) = self.create_in(rel.dirs(), &tmp, flags, rel)?;
        let path = self.root.join(rel.to_path());
        file.seek(io::SeekFrom::Start(offset)).map_err(|e| DestError::Io { path: path.clone(), source: e })?;
        Ok(FileWriter {
            dir,
            tmp,
            name,
            path,
            file: Some(io::BufWriter::with_capacity(WRITE_BUFFER, file)),
            written: 0,
            piece: true,
            writeback: self.writeback,
        })
    }

    /// Puts a file assembled from pieces in place; `size` cuts or extends it to its length.
    pub fn finish_pieces(&self, rel: &SafePath, size: u64) -> Result<(), DestError> {
        let mut tmp = rel.as_bytes();
        tmp.extend_from_slice(TMP_SUFFIX.as_bytes());
        let tmp = SafePath::parse(&tmp)?;
        let path = self.root.join(tmp.to_path());
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| DestError::Io { path: path.clone(), source: e })?;
        f.set_len(size).map_err(|e| DestError::Io { path: path.clone(), source: e })?;
        self.rename(&tmp, rel)
    }

    /// Cuts (or extends) a file compared in place in pieces to its length; an error if it is
    /// no longer a file DEST may write in place.
    pub fn set_size(&self, rel: &SafePath, size: u64) -> Result<(), DestError> {
        let path = self.root.join(rel.to_path());
        let gone = || DestError::Io { path: path.clone(), source: io::Error::from(io::ErrorKind::NotFound) };
        let f = self.open_existing(rel)?.ok_or_else(gone)?;
        f.set_len(size).map_err(|e| DestError::Io { path: path.clone(), source: e })
    }

    /// Removes the temporary file of a file whose pieces were abandoned (it vanished).
    pub fn drop_pieces(&self, rel: &SafePath) -> Result<(), DestError> {
        let mut tmp = rel.as_bytes();
        tmp.extend_from_slice(TMP_SUFFIX.as_bytes());
        self.remove_file(&SafePath::parse(&tmp)?)
    }

    /// Writes a whole small file atomically.
    pub fn write_file(&self, rel: &SafePath, data: &[u8], sync: bool) -> Result<(), DestError> {
        let mut w = self.create_file(rel)?;
        w.write(data)?;
        w.finish(sync).map(drop)
    }

    pub fn rename(&self, from: &SafePath, to: &SafePath) -> Result<(), DestError> {
        let a = self.open_dirs(from.dirs(), false)?;
        let b = self.open_dirs(to.dirs(), false)?;
        renameat(&a, from.file_name(), &b, to.file_name()).map_err(|e| self.io_err(&to.to_path(), e))
    }

    /// Removes a file if it exists.
    pub fn remove_file(&self, rel: &SafePath) -> Result<(), DestError> {
        let dir = match self.open_dirs(rel.dirs(), false) {
            Ok(d) => d,
            Err(DestError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match unlinkat(&dir, rel.file_name(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.io_err(&rel.to_path(), e)),
        }
    }

    /// fsyncs one directory below DEST (or DEST itself for an empty list).
    pub fn sync_dir(&self, rel: Option<&SafePath>) -> Result<(), DestError> {
        let fd = self.open_dirs(rel.map_or(&[][..], |r| &r.parts[..]), false)?;
        nix::unistd::fsync(&fd).map_err(|e| self.io_err(&rel.map_or(PathBuf::new(), |r| r.to_path()), e))
    }

    /// Flushes everything written to DEST's file system to stable storage (`syncfs`, which
    /// reports write-back errors on Linux 5.8+).
    pub fn sync_all(&self) -> Result<(), DestError> {
        nix::unistd::syncfs(&self.fd).map_err(|e| self.io_err(Path::new(""), e))
    }

    /// DEST's root opened once more: a descriptor of its own (an open file of its own, not a
    /// `dup`) for a background `syncfs` (`crate::flusher`, which also keeps the errors it
    /// meets: not every one is reported again to [`Dest::sync_all`]).
    pub fn reopen(&self) -> Result<OwnedFd, DestError> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        openat(self.fd.as_fd(), ".", flags, Mode::empty()).map_err(|e| self.io_err(Path::new(""), e))
    }

    /// Opens an existing file below DEST for reading and writing in place (`--delta`), never
    /// through a symlink. `None` when there is nothing there to refresh in place: no such file,
    /// not a regular file, or a file with other hard links (a copy made with `--link` shares
    /// its files with another cluster, which an in-place write would change too).
    pub fn open_existing(&self, rel: &SafePath) -> Result<Option<fs::File>, DestError> {
        let dir = match self.open_dirs(rel.dirs(), false) {
            Ok(d) => d,
            Err(DestError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(DestError::NotADir { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(&dir, rel.file_name(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP | Errno::EISDIR | Errno::ENXIO) => return Ok(None),
            Err(e) => return Err(self.io_err(&rel.to_path(), e)),
        };
        let file = fs::File::from(fd);
        let meta = file.metadata().map_err(|e| DestError::Io { path: self.root.join(rel.to_path()), source: e })?;
        use std::os::unix::fs::MetadataExt;
        if !meta.file_type().is_file() || meta.nlink() != 1 {
            return Ok(None);
        }
        Ok(Some(file))
    }

    /// Size of a regular file below DEST, `None` if it does not exist.
    pub fn file_size(&self, rel: &SafePath) -> Result<Option<u64>, DestError> {
        let p = self.root.join(rel.to_path());
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DestError::Io { path: p, source: e }),
        }
    }
}

/// DEST and the directories tablespaces are copied to: a path `pg_tblspc/<oid>/REST` is
/// written as REST under that tablespace's target (DEST holds a symlink there).
pub struct Roots {
    pub main: Dest,
    spc: Vec<(Vec<u8>, Dest)>,
}

impl Roots {
    pub fn new(main: Dest) -> Roots {
        Roots { main, spc: Vec::new() }
    }

    /// Adds tablespace `oid`, copied to `dir` (created if missing).
    pub fn add_tablespace(&mut self, oid: u32, dir: &Path, group_access: bool) -> Result<(), DestError> {
        fs::create_dir_all(dir).map_err(|e| DestError::Create { path: dir.into(), source: e })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(if group_access { 0o750 } else { 0o700 }))
            .map_err(|e| DestError::Create { path: dir.into(), source: e })?;
        let d = Dest::open(dir, group_access)?.in_place(self.main.in_place).writeback(self.main.writeback);
        self.spc.push((oid.to_string().into_bytes(), d));
        Ok(())
    }

    /// Where `p` is written: the root, and the path below it.
    pub fn route(&self, p: &SafePath) -> (&Dest, SafePath) {
        if p.parts.len() > 2 && p.parts[0] == b"pg_tblspc" {
            if let Some((_, d)) = self.spc.iter().find(|(oid, _)| *oid == p.parts[1]) {
                return (d, SafePath { parts: p.parts[2..].to_vec() });
            }
        }
        (&self.main, p.clone())
    }

    /// A background `syncfs` of the file systems of DEST and of every tablespace target (each
    /// once) until the result is finished or dropped (see `crate::flusher`). `None`, with a
    /// warning, when a root cannot be opened again: it is only a head start on the final sync.
    pub fn flusher(&self) -> Option<crate::flusher::Flusher> {
        let mut targets: Vec<crate::flusher::Target> = Vec::new();
        let mut devs = Vec::new();
        for d in std::iter::once(&self.main).chain(self.spc.iter().map(|(_, d)| d)) {
            let fd = match d.reopen() {
                Ok(fd) => fd,
                Err(e) => {
                    log::warn!("no background sync of DEST while the copy runs: {e}");
                    return None;
                }
            };
            let dev = nix::sys::stat::fstat(&fd).map(|st| st.st_dev).ok();
            if dev.is_some() && devs.contains(&dev) {
                continue;
            }
            devs.push(dev);
            targets.push(crate::flusher::Target { fd, path: d.root().to_path_buf() });
        }
        log::info!("syncing DEST in the background while the copy runs");
        Some(crate::flusher::Flusher::start(targets))
    }

    /// `syncfs` of DEST's file system and of every tablespace target's.
    pub fn sync_all(&self) -> Result<(), DestError> {
        self.main.sync_all()?;
        for (_, d) in &self.spc {
            d.sync_all()?;
        }
        Ok(())
    }

    /// True for `pg_tblspc/<oid>` of a tablespace copied elsewhere (a symlink in DEST).
    pub fn is_link(&self, p: &SafePath) -> bool {
        p.parts.len() == 2 && p.parts[0] == b"pg_tblspc" && self.spc.iter().any(|(oid, _)| *oid == p.parts[1])
    }
}

/// A file being written below DEST (see [`Dest::create_file`]).
pub struct FileWriter {
    dir: Arc<OwnedFd>,
    tmp: Vec<u8>,
    name: Vec<u8>,
    path: PathBuf,
    file: Option<io::BufWriter<fs::File>>,
    written: u64,
    /// One piece of a larger file: never renamed or removed by the writer.
    piece: bool,
    writeback: bool,
}

impl FileWriter {
    pub fn write(&mut self, data: &[u8]) -> Result<(), DestError> {
        if let Some(f) = self.file.as_mut() {
            f.write_all(data).map_err(|e| DestError::Io { path: self.path.clone(), source: e })?;
            self.written += data.len() as u64;
        }
        Ok(())
    }

    /// Appends `n` zero bytes (a file that shrank on the server is zero-filled, as core does).
    pub fn write_zeros(&mut self, mut n: u64) -> Result<(), DestError> {
        let zeros = [0u8; 8192];
        while n > 0 {
            let k = n.min(zeros.len() as u64) as usize;
            self.write(&zeros[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// A writer straight to `file` (no directory, no temporary name), for tests.
    #[cfg(test)]
    pub(crate) fn on(file: fs::File, path: PathBuf) -> FileWriter {
        let dir = Arc::new(OwnedFd::from(fs::File::open("/").expect("/")));
        FileWriter {
            dir,
            tmp: Vec::new(),
            name: Vec::new(),
            path,
            file: Some(io::BufWriter::with_capacity(WRITE_BUFFER, file)),
            written: 0,
            piece: false,
            writeback: false,
        }
    }

    /// Where the file goes (its final name).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This writer as an `io::Write`. Its errors are the system's own (ENOSPC stays ENOSPC);
    /// [`FileWriter::path`] names the file.
    pub fn io(&mut self) -> impl Write + '_ {
        struct W<'a>(&'a mut FileWriter);
        impl Write for W<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf).map_err(|e| match e {
                    DestError::Io { source, .. } => source,
                    other => io::Error::other(other),
                })?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        W(self)
    }

    /// Flushes (and with `sync`, fsyncs) the file and renames it into place.
    pub fn finish(mut self, sync: bool) -> Result<u64, DestError> {
        let path = self.path.clone();
        let ioerr = |e: io::Error| DestError::Io { path: path.clone(), source: e };
        if let Some(buf) = self.file.take() {
            let f = buf.into_inner().map_err(|e| ioerr(e.into_error()))?;
            if sync {
                f.sync_all().map_err(ioerr)?;
            } else if self.writeback && self.written >= WRITEBACK_FROM {
                start_writeback(&f, 0, 0);
            }
        }
        if !self.piece && self.tmp != self.name {
            renameat(&*self.dir, self.tmp.as_slice(), &*self.dir, self.name.as_slice())
                .map_err(|e| ioerr(errno_io(e)))?;
        }
        self.tmp.clear();
        Ok(self.written)
    }
}

/// Hands a file's dirty pages (bytes `off..off + len`; `len` 0: to the end) to the kernel's
/// write-back (`sync_file_range`, which does not wait). A failure is not fatal: the master's
/// syncfs reports write-back errors.
pub(crate) fn start_writeback(f: &fs::File, off: u64, len: u64) {
    let (off, len) = (i64::try_from(off).unwrap_or(0), i64::try_from(len).unwrap_or(0));
    // SAFETY: a plain system call on a descriptor we own; it only starts I/O.
    if unsafe { libc::sync_file_range(f.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) } != 0 {
        log::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if !self.tmp.is_empty() && !self.piece {
            self.file.take();
            let _ = unlinkat(&*self.dir, self.tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert!(SafePath::parse("base/1/1259").is_ok());
        assert!(SafePath::parse("a b/c=d").is_ok());
        assert_eq!(SafePath::parse(b"dir/bad\xffname").unwrap().file_name(), b"bad\xffname");
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a/./b", "a//b", "a/", ".", "..", "a\0b"] {
            assert!(SafePath::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SafePath::parse("a".repeat(MAX_PATH + 1)).is_err());
    }

    #[test]
    fn writes_stay_inside_and_never_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = Dest::open(t.path(), false).unwrap();
        d.write_file(&SafePath::parse("a/b/c").unwrap(), b"hello", false).unwrap();
        assert_eq!(fs::read(t.path().join("a/b/c")).unwrap(), b"hello");
        let mode = fs::metadata(t.path().join("a/b/c")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A symlinked directory inside DEST is refused, not followed.
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).unwrap();
        assert!(matches!(
            d.write_file(&SafePath::parse("link/x").unwrap(), b"x", false),
            Err(DestError::NotADir { .. })
        ));
        // A symlink at the file name itself is not followed either (the temp name is written,
        // then renamed over the link).
        std::os::unix::fs::symlink(outside.path().join("y"), t.path().join("y")).unwrap();
        d.write_file(&SafePath::parse("y").unwrap(), b"y", false).unwrap();
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(fs::symlink_metadata(t.path().join("y")).unwrap().is_file());
    }

    #[test]
    fn in_place_writes_the_final_name_and_never_follows_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = Dest::open(t.path(), false).unwrap().in_place(true);
        let rel = SafePath::parse("base/5/1259").unwrap();
        let mut w = d.create_file(&rel).unwrap();
        w.write(b"page").unwrap();
        assert!(t.path().join("base/5/1259").exists(), "written under its own name");
        assert!(!t.path().join("base/5/1259.pgbb-tmp").exists());
        w.finish(false).unwrap();
        assert_eq!(fs::read(t.path().join("base/5/1259")).unwrap(), b"page");
        // Dropped unfinished: removed.
        let mut w = d.create_file(&SafePath::parse("base/5/2000").unwrap()).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert!(!t.path().join("base/5/2000").exists());
        // A symlink at the name: an error (O_NOFOLLOW), nothing written outside.
        std::os::unix::fs::symlink(outside.path().join("z"), t.path().join("base/5/z")).unwrap();
        assert!(d.create_file(&SafePath::parse("base/5/z").unwrap()).is_err());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn the_cached_directory_is_reopened_when_it_was_removed() {
        let t = tempfile::tempdir().unwrap();
        let d = Dest::open(t.path(), false).unwrap().in_place(true);
        d.write_file(&SafePath::parse("a/b/one").unwrap(), b"1", false).unwrap();
        fs::remove_dir_all(t.path().join("a")).unwrap();
        // The cached descriptor points at a deleted directory: the file must not vanish into it.
        d.write_file(&SafePath::parse("a/b/two").unwrap(), b"2", false).unwrap();
        assert_eq!(fs::read(t.path().join("a/b/two")).unwrap(), b"2");
        // A directory replaced by a symlink after caching is not followed: the cached
        // descriptor still names the old (now unlinked) directory, or the walk refuses.
        let outside = tempfile::tempdir().unwrap();
        d.write_file(&SafePath::parse("c/x").unwrap(), b"x", false).unwrap();
        fs::rename(t.path().join("c"), t.path().join("c-old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("c")).unwrap();
        let _ = d.write_file(&SafePath::parse("c/y").unwrap(), b"y", false);
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none(), "a write left DEST");
    }

    #[test]
    fn unfinished_file_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = Dest::open(t.path(), false).unwrap();
        {
            let mut w = d.create_file(&SafePath::parse("f").unwrap()).unwrap();
            w.write(b"partial").unwrap();
        }
        assert!(fs::read_dir(t.path()).unwrap().next().is_none());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn component() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"a".to_vec()),
            Just(b"b".to_vec()),
            Just(b"..".to_vec()),
            Just(b".".to_vec()),
            Just(b"".to_vec()),
            Just(b"link".to_vec()),
            Just(b"file".to_vec()),
            Just(b"x\0y".to_vec()),
            Just(b"\xff\xfe".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
    }

    fn path() -> impl Strategy<Value = Vec<u8>> {
        (proptest::bool::ANY, proptest::collection::vec(component(), 1..6)).prop_map(|(abs, parts)| {
            let mut p = if abs { b"/".to_vec() } else { Vec::new() };
            p.extend(parts.join(&b'/'));
            p
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the path, nothing is ever written outside DEST, and nothing panics.
        #[test]
        fn no_write_escapes_dest(paths in proptest::collection::vec(path(), 1..8)) {
            let t = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            let root = t.path().join("dest");
            fs::create_dir(&root).unwrap();
            std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
            std::os::unix::fs::symlink(outside.path().join("f"), root.join("file")).unwrap();
            let d = Dest::open(&root, false).unwrap();
            for p in &paths {
                if let Ok(sp) = SafePath::parse(p) {
                    prop_assert!(!sp.as_bytes().starts_with(b"/"));
                    prop_assert!(!sp.parts.iter().any(|c| c.is_empty() || c == b"." || c == b".." || c.contains(&0) || c.contains(&b'/')));
                    let _ = d.write_file(&sp, b"data", false);
                    let _ = d.create_dir_all(&sp);
                }
            }
            prop_assert!(fs::read_dir(outside.path()).unwrap().next().is_none(), "wrote outside DEST");
            // Nothing but DEST appeared next to it.
            prop_assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
        }
    }
}
