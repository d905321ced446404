//! Fuzz target: the stdin/replay reader of every input format (`detect::cloud::CloudSource`) on
//! arbitrary bytes. The first byte picks the read size (1..=256), the second the
//! `AUDIT_FORMAT`; the rest is the input. It must never panic or hang, hand out the same
//! records with the same spans whatever the read size, keep every span inside the input and
//! in order; and what the GKE mapping builds of the input must be an audit event the strict
//! scanner reads.
#![no_main]

use std::io::Read;

use healert_agent::detect::audit::extract;
use healert_agent::detect::cloud::{gke_event, CloudSource, Format};
use healert_agent::source::{Next, Source};
use libfuzzer_sys::fuzz_target;

/// Hands out at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(self.step).min(out.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// (record or skip reason, start, end, how) of everything the source hands out.
type Out = (Result<Vec<u8>, String>, u64, u64, Option<healert_agent::source::Read>);

fn all<R: Read>(mut src: CloudSource<R>) -> Vec<Out> {
    let mut out = Vec::new();
    loop {
        match src.next() {
            Next::Record(r) => out.push((Ok(r.bytes.to_vec()), r.start, r.end, Some(r.how))),
            Next::Skipped { start, end, why } => out.push((Err(why.to_string()), start, end, None)),
            Next::Idle => panic!("a slice is never idle"),
            Next::End => return out,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [step, format, input @ ..] = data else {
        return;
    };
    let format = Format::ALL[usize::from(*format) % Format::ALL.len()];
    let step = usize::from(*step) + 1;
    // A small line cap, so that over-long lines are streamed too.
    let whole = all(CloudSource::new(input, 4096, format));
    let trickled = all(CloudSource::new(Trickle { data: input, step }, 4096, format));
    assert_eq!(whole, trickled, "the records depend on the read size");
    let mut last_start = 0;
    for (r, start, end, how) in &whole {
        assert!(start <= end && *end <= input.len() as u64, "span {start}..{end} out of the input");
        assert!(*start >= last_start, "spans go backwards");
        last_start = *start;
        if let (Err(why), Some(_)) = (r, how) {
            panic!("a record and a reason at once: {why}");
        }
    }
    // What the GKE mapping builds is always an audit event the strict scanner reads.
    if let Ok(event) = gke_event(input) {
        extract(&event).expect("a mapped GKE entry is an audit event");
    }
});
