//! Shared-memory handles (`Array`, `Value`) decoded over a real shared-memory file, then used.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::shm_handle(data);
});
