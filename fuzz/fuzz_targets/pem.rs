//! Fuzz target: `lanyard::fuzzing::pem` must return for any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanyard::fuzzing::pem(data);
});
