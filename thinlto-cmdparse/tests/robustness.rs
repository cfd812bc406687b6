//! The parser, the shell splitter and modpost's CRC reader never panic, on
//! any input; quoting round-trips through the splitter.

use std::path::Path;

use proptest::prelude::*;
use thinlto_cmdparse::{read_symvers, shell, CmdFile};

/// Inputs shaped like `.cmd` files, with the characters that matter.
fn cmdish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"savedcmd_a.o := ".to_vec()),
        Just(b"saved_c_flags_a.o := ".to_vec()),
        Just(b"deps_a.o := \\\n".to_vec()),
        Just(b"source_a.o := ".to_vec()),
        Just(b"#SYMVER ".to_vec()),
        Just(b"$(wildcard include/config/X) \\\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"'".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"$$".to_vec()),
        Just(b"$(pound)".to_vec()),
        Just(b" ; ".to_vec()),
        Just(b"0x1f".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
        "[ -~]{0,12}".prop_map(|s| s.into_bytes()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn parser_never_panics(bytes in cmdish()) {
        if let Ok(c) = CmdFile::parse(Path::new("x/.a.o.cmd"), &bytes) {
            let _ = c.backend_flags();
        }
        let _ = read_symvers(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = CmdFile::parse(Path::new("x"), &bytes);
        let _ = read_symvers(&bytes);
        let _ = shell::split(&String::from_utf8_lossy(&bytes));
        let _ = shell::split_commands(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn quote_round_trips(words in prop::collection::vec("[ -~\t]{0,10}", 0..6)) {
        let line = shell::join(&words);
        prop_assert_eq!(shell::split(&line).unwrap(), words);
    }
}
