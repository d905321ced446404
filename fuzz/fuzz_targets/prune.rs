//! Fuzz target: the streaming pruner (`source::prune`) on arbitrary bytes fed in arbitrary
//! chunks. It must never panic or hang, must give the same records and the same ending
//! whatever the chunking, and — for input the strict scanner accepts — must keep exactly what
//! `audit::extract` reads (the fields the rules use).
#![no_main]

use healert_agent::detect::audit::{extract, EVENT_LIST, EVENT_SPEC};
use healert_agent::source::prune::{prune_all, Caps, Pruner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (step, input) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => return,
    };
    let whole = prune_all(input, EVENT_SPEC, EVENT_LIST, Caps::default());
    let mut p = Pruner::new(EVENT_SPEC, EVENT_LIST, Caps::default());
    let mut chunked = Vec::new();
    for c in input.chunks(step) {
        p.feed(c);
        while let Some(r) = p.take() {
            chunked.push(r);
        }
    }
    let end = p.finish();
    while let Some(r) = p.take() {
        chunked.push(r);
    }
    assert_eq!(whole.records, chunked, "records depend on the chunking");
    assert_eq!(whole.end, end, "the ending depends on the chunking");
    if let Err(e) = &end {
        let _ = e.to_string();
    }
    // Differential: what the strict scanner reads, the pruned record reads the same.
    if let (Ok(strict), false) = (extract(input), whole.container) {
        if strict.kind != "EventList" {
            let record = whole.records[0].record.as_ref().expect("a valid event is kept");
            let pruned = extract(record).expect("a kept record of a valid event is valid");
            assert_eq!(
                (
                    &strict.kind,
                    &strict.stage,
                    &strict.verb,
                    &strict.username,
                    &strict.resource,
                    &strict.subresource,
                    &strict.namespace,
                    &strict.name,
                    &strict.request_received_timestamp,
                    &strict.audit_id
                ),
                (
                    &pruned.kind,
                    &pruned.stage,
                    &pruned.verb,
                    &pruned.username,
                    &pruned.resource,
                    &pruned.subresource,
                    &pruned.namespace,
                    &pruned.name,
                    &pruned.request_received_timestamp,
                    &pruned.audit_id
                )
            );
            for (a, b) in [
                (strict.annotations, pruned.annotations),
                (strict.request_annotations, pruned.request_annotations),
                (strict.response_annotations, pruned.response_annotations),
            ] {
                assert_eq!(a.is_some(), b.is_some());
            }
        }
    }
});
