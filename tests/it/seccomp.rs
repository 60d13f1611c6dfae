//! A world without pidfds: after [`refuse_pidfd_open`], `pidfd_open` fails
//! with ENOSYS in this process and every process it starts, as under
//! valgrind 3.19 and on kernels before 5.3. Shared by the `no_pidfd` tests
//! and the bench crate's `no-pidfd` wrapper (which includes this file).

use std::io;

/// `AUDIT_ARCH_*` of the architecture the filter expects.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf, k }
}

/// Installs a seccomp filter that fails `pidfd_open` with ENOSYS. It is
/// inherited across fork and exec and cannot be lifted; it needs no
/// privilege (it sets no_new_privs, so setuid bits no longer raise it).
pub(crate) fn refuse_pidfd_open() -> io::Result<()> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut filter = [
        stmt(load, ARCH_OFFSET),
        // Another architecture's numbers mean other calls: leave them be.
        jump_eq(AUDIT_ARCH, 0, 3),
        stmt(load, NR_OFFSET),
        jump_eq(libc::SYS_pidfd_open as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, both alive across the call; the
    // kernel copies the program before returning.
    let r = unsafe {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _, 0, 0)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
