//! `SOCK_SEQPACKET` Unix sockets carrying one message plus fds
//! (`SCM_RIGHTS`) per packet.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::wire::{MAX_FDS, MAX_MSG};

/// A received packet.
#[derive(Debug)]
pub struct Packet {
    /// The bytes.
    pub data: Vec<u8>,
    /// The fds that came with it.
    pub fds: Vec<OwnedFd>,
}

/// Why a packet could not be received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Eof,
    /// The packet or its fds were truncated (too big): dropped.
    #[error("oversized message dropped")]
    Truncated,
    /// A system call failed.
    #[error("socket: {0}")]
    Os(#[from] Errno),
}

/// A fresh `SOCK_SEQPACKET` socket.
pub fn seqpacket() -> Result<OwnedFd, Errno> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
}

/// Connects to a listening socket at `path`.
pub fn connect(path: &Path) -> Result<OwnedFd, Errno> {
    let s = seqpacket()?;
    rustix::net::connect(&s, &SocketAddrUnix::new(path)?)?;
    Ok(s)
}

/// Listens on `path` (a stale socket file there is replaced).
pub fn listen(path: &Path) -> Result<OwnedFd, Errno> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let s = seqpacket()?;
    rustix::net::bind(&s, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&s, 64)?;
    Ok(s)
}

/// Sends one packet with `fds`.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::TOOBIG);
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[std::io::IoSlice::new(data)],
            &mut anc,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives one packet (blocking).
pub fn recv(sock: BorrowedFd<'_>) -> Result<Packet, RecvError> {
    let mut data = vec![0u8; MAX_MSG];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [std::io::IoSliceMut::new(&mut data)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(RecvError::Truncated);
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(RecvError::Eof);
    }
    data.truncate(msg.bytes);
    Ok(Packet { data, fds })
}

/// Borrowed fds of a list of owned ones.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}
