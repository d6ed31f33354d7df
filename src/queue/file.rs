//! Where the queue's bytes live: `pg_realtime/queue`, a file every process maps shared.
//!
//! Why a file and not the server's shared memory: a writer's record is in the queue once its
//! transaction commits, but the worker writes it to the history a moment later. A crash of any
//! process in between (`kill -9`, an immediate shutdown, an out-of-memory kill) makes the
//! postmaster start over with new shared memory, which would lose those committed changes. The
//! pages of a mapped file stay in the kernel's page cache instead, so the next start finds
//! every record there and the worker carries on from the last one it had written. Writers pay
//! the same as for shared memory: they copy into mapped pages, and the kernel writes them back
//! in the background, never on the commit path.
//!
//! What the file does not survive is the machine going down (unsynced pages are lost, like the
//! history's unsynced tail): a file written before the current boot is not trusted, nor is a
//! copy of one (a base backup or a clone of the data directory: its inode differs), and the
//! queue starts empty, as it does when the file cannot be mapped at all.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;

/// Relative to the data directory, every process's working directory.
pub const PATH: &str = "pg_realtime/queue";

/// The kernel's identifier of this boot; pages written back before another boot may be torn.
pub fn boot_id() -> [u8; 36] {
    let mut id = [0u8; 36];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let text = text.trim().as_bytes();
        if text.len() == id.len() {
            id.copy_from_slice(text);
        }
    }
    id
}

/// A mapped queue: where, whether the file already had its size (its contents may then be a
/// previous queue's), and the file's inode (0 for anonymous memory).
pub struct Mapped {
    pub base: *mut u8,
    pub previous: bool,
    pub inode: u64,
}

/// Map `size` bytes of the queue file shared, creating or resizing it as needed.
pub fn map(size: usize) -> io::Result<Mapped> {
    std::fs::create_dir_all(crate::spill::DIR)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(PATH)?;
    let metadata = file.metadata()?;
    let same_size = metadata.len() == size as u64;
    if !same_size {
        file.set_len(0)?;
        file.set_len(size as u64)?;
    }
    // Pages are allocated now rather than at a writer's first touch, so a full disk is found
    // here, not as a SIGBUS in a committing backend.
    // SAFETY: a valid descriptor and a range within the file.
    let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    // SAFETY: a fresh shared mapping of a file of at least `size` bytes; it is never unmapped,
    // and children forked by the postmaster inherit it. Closing the descriptor keeps it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Mapped {
        base: base.cast(),
        previous: same_size,
        inode: metadata.ino(),
    })
}

/// Shared memory for the queue when the file cannot be mapped: what it holds then survives
/// only a crash of a process the postmaster outlives.
pub fn map_anonymous(size: usize) -> io::Result<Mapped> {
    // SAFETY: an anonymous shared mapping, never unmapped, inherited by forked children.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Mapped {
        base: base.cast(),
        previous: false,
        inode: 0,
    })
}
