//! Fuzz target: `lanyard::fuzzing::csr` must return for any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanyard::fuzzing::csr(data);
});
