//! Fuzz target: `lanyard::fuzzing::request_json` must return for any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lanyard::fuzzing::request_json(data);
});
