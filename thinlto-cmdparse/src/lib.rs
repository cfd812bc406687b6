//! kbuild `.cmd` files: the backend flags, the dependencies and the
//! `#SYMVER` CRCs, read exactly as GNU make and `/bin/sh` read them.

pub mod make;
