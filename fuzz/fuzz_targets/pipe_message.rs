//! Raw bytes under a pipe's receiving end: its framing and message decoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::pipe_message(data);
});
