//! Task outcomes as the parent decodes a worker's DONE frame, with and without descriptors.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    multiproc::__fuzz::task_outcomes(data);
});
