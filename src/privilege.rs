//! Dropping root after the sockets are bound: `option user`.

use std::path::Path;

use rustix::fs::{Gid, Uid};

/// Looks `user` up in /etc/passwd (no libc NSS on a musl router).
fn lookup(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == user {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// The `Threads:` count of a /proc/PID/status text.
fn thread_count(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Gives `paths` to `user` (each path itself, never what a symbolic link
/// names), then becomes that user (and its group) for good. Must run before any other thread exists: the id changes below
/// apply to the calling thread only, so a thread started earlier would
/// stay root. Refuses (rather than half-drop) when one exists.
pub fn drop_to(user: &str, paths: &[&Path]) -> Result<(), String> {
    if let Some(n) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(thread_count)
        && n > 1
    {
        return Err(format!(
            "cannot drop privileges to '{user}': {n} threads already run and would stay root"
        ));
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd to find user '{user}': {e}"))?;
    let (uid, gid) =
        lookup(&passwd, user).ok_or_else(|| format!("user '{user}' does not exist"))?;
    // SAFETY-free: these ids come from the system's own passwd file.
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    for p in paths {
        give(p, uid, gid)?;
    }
    rustix::thread::set_thread_groups(&[gid])
        .map_err(|e| format!("cannot set groups for '{user}': {e}"))?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)
        .map_err(|e| format!("cannot switch to the group of '{user}': {e}"))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)
        .map_err(|e| format!("cannot switch to user '{user}': {e}"))?;
    Ok(())
}

/// Changes the owner of `p` itself: a symbolic link is not followed (the
/// daemon's user could otherwise plant `spool_dir/x -> /etc` and have root
/// hand it /etc at the next start), and a missing path is no error.
fn give(p: &Path, uid: Uid, gid: Gid) -> Result<(), String> {
    use rustix::fs::{AtFlags, CWD, chownat};
    match chownat(CWD, p, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(format!(
            "cannot give {} to the mxspool user: {e}",
            p.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_threads_in_proc_status() {
        let s = "Name:\tmxspool\nUmask:\t0022\nThreads:\t2\nSigQ:\t0/1\n";
        assert_eq!(thread_count(s), Some(2));
        assert_eq!(thread_count("Name:\tx\n"), None);
    }

    #[test]
    fn finds_users_in_passwd() {
        let p = "root:x:0:0:root:/root:/bin/ash\nmxspool:x:421:421:mxspool:/var:/bin/false\n";
        assert_eq!(lookup(p, "mxspool"), Some((421, 421)));
        assert_eq!(lookup(p, "nobody"), None);
    }
}
