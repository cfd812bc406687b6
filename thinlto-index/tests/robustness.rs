//! The archive reader and the magic check never panic on truncated or
//! hostile input.

use proptest::prelude::*;
use thinlto_index::archive::members_from_bytes;
use thinlto_index::classify_bytes;

fn header(name: &str, size: &str) -> Vec<u8> {
    format!(
        "{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n",
        "0", "0", "0", "644"
    )
    .into_bytes()
}

/// Archives built from plausible pieces: magics, headers with odd names
/// and sizes, long-name tables, symbol tables, random bytes.
fn archiveish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"!<thin>\n".to_vec()),
        Just(b"!<arch>\n".to_vec()),
        Just(header("//", "12")),
        Just(b"a/b.o/\nc d.o/\n".to_vec()),
        Just(header("/", "8")),
        Just(header("/SYM64/", "16")),
        Just(header("/0", "100")),
        Just(header("/99999", "4")),
        Just(header("x.o/", "3")),
        Just(header("#1/20", "30")),
        Just(header("/-1", "-5")),
        Just(b"\x00\x00\x00\x02\x00\x00\x00\x08".to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn reader_never_panics(data in archiveish(), cut in any::<prop::sample::Index>()) {
        let _ = members_from_bytes(b"dir/vmlinux.a", &data);
        let n = cut.index(data.len() + 1);
        let _ = members_from_bytes(b"x.a", &data[..n]);
        let _ = classify_bytes(&data[..n]);
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = members_from_bytes(b"x.a", &data);
        let _ = classify_bytes(&data);
    }
}
