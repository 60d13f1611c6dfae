//! The frame splitter of a parent-worker channel (`wire::Conn`), fed through a real socket.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::frames(data);
});
