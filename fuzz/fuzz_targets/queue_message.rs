//! Queue messages, inline and in a shared-memory file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::queue_message(data);
});
