use ferry_image::ImageError;
use std::io;

/// Why a dump or restore failed. Every message names the object (pid, fd, path, address).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pid {pid}: no such process")]
    NoProcess { pid: i32 },
    #[error("pid {pid}: cannot attach with ptrace")]
    Attach {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: exited during the dump")]
    Exited { pid: i32 },
    #[error("pid {pid}: {what} is not supported yet")]
    Unsupported { pid: i32, what: String },
    #[error("{object}")]
    Sys {
        object: String,
        #[source]
        source: io::Error,
    },
    #[error("{object}: {what}")]
    Invalid { object: String, what: String },
    #[error("pid {pid} is already in use by a running process (wait until /proc/{pid} is gone, or restore into a new PID namespace)")]
    PidTaken { pid: i32 },
    #[error("pid {pid} is still held by an exited process that its parent has not reaped (a zombie) after {waited_s} s; its parent must wait() for it, or exit")]
    PidZombie { pid: i32, waited_s: u64 },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Attach an object description to an `io::Error`.
pub(crate) trait Ctx<T> {
    fn ctx(self, object: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Ctx<T> for Result<T, io::Error> {
    fn ctx(self, object: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Sys { object: object(), source })
    }
}
