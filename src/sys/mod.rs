//! Every system call multiproc makes, one backend per OS behind one `cfg`.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
compile_error!("multiproc supports Linux only for now");

pub(crate) use imp::*;

#[cfg(target_os = "linux")]
mod fork;
#[cfg(target_os = "linux")]
pub(crate) use fork::*;
